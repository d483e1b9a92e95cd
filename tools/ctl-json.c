/* Writing JSON: escaped strings, and re-indenting the daemon's compact
 * statistics so people can read them (still valid JSON for programs). */
#include <stdio.h>
#include <string.h>
#include "ctl-tool.h"

void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", f);
		else if (*p < 0x20)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* A newline and two spaces per level. */
static void indent(FILE *f, int depth)
{
	fputc('\n', f);
	for (int i = 0; i < depth; i++)
		fputs("  ", f);
}

/* Copy a string token verbatim; returns the byte after its closing quote. */
static const char *copy_string(FILE *f, const char *p)
{
	fputc(*p++, f);
	while (*p && *p != '"') {
		if (*p == '\\' && p[1])
			fputc(*p++, f);
		fputc(*p++, f);
	}
	if (*p)
		fputc(*p++, f);
	return p;
}

/* The next byte that is not JSON whitespace. */
static const char *skip_ws(const char *p)
{
	while (*p && strchr(" \t\r\n", *p))
		p++;
	return p;
}

void json_pretty(FILE *f, const char *json)
{
	int depth = 0;
	const char *p = skip_ws(json);

	while (*p) {
		char c = *p;

		if (c == '"') {
			p = copy_string(f, p);
			continue;
		}
		if (c == '{' || c == '[') {
			const char *next = skip_ws(p + 1);
			fputc(c, f);
			if (*next == '}' || *next == ']') {     /* keep {} and [] compact */
				fputc(*next, f);
				p = next + 1;
			} else {
				indent(f, ++depth);
				p = next;
			}
		} else if (c == '}' || c == ']') {
			indent(f, depth > 0 ? --depth : 0);
			fputc(c, f);
			p++;
		} else if (c == ',') {
			fputc(c, f);
			indent(f, depth);
			p = skip_ws(p + 1);
		} else if (c == ':') {
			fputs(": ", f);
			p = skip_ws(p + 1);
		} else if (strchr(" \t\r\n", c)) {
			p = skip_ws(p);
		} else {
			fputc(c, f);
			p++;
		}
	}
	fputc('\n', f);
}
