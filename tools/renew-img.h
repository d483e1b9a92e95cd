/* renew-img: the offline image tool. One file per command group
 * (tools/img-*.c); tools/renew-img.c dispatches and holds the helpers. */
#ifndef RENEW_IMG_H
#define RENEW_IMG_H

#include <stdint.h>
#include <stdio.h>

/* Exit codes: 0 done, 1 the operation failed, 2 the command line is wrong. */
#define IMG_EXIT_FAIL  1
#define IMG_EXIT_USAGE 2

/* A subcommand: argv[0] is its name. */
struct img_cmd {
	const char *name;
	const char *args;  /* usage line after the name */
	const char *help;
	int (*run)(int argc, char **argv);
};

/* Print "renew-img: usage: ..." for one command (or all) and return 2. */
int img_usage(const char *cmd);
/* Print "renew-img: MSG" to stderr and return 1. */
int img_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The library's last message as a failure. */
int img_fail_lib(void);
/* Split argv into flags (from `allowed`, e.g. "json,repair") and operands;
 * returns the operand count or -1 after a usage message. Flags set bits
 * in *flags in the order listed. */
int img_args(int argc, char **argv, const char *allowed, unsigned *flags, char **ops, int max_ops);
/* Bytes from "123", "4K", "1G"... (powers of 1024); -1 on bad input. */
int img_parse_size(const char *s, uint64_t *out);
/* A JSON string literal. */
void img_json_str(FILE *f, const char *s);

int img_cmd_create(int argc, char **argv);
int img_cmd_snapshot(int argc, char **argv);
int img_cmd_info(int argc, char **argv);
int img_cmd_map(int argc, char **argv);
int img_cmd_check(int argc, char **argv);
int img_cmd_convert(int argc, char **argv);
int img_cmd_write(int argc, char **argv);
int img_cmd_commit(int argc, char **argv);
int img_cmd_renew(int argc, char **argv);
int img_cmd_history(int argc, char **argv);
int img_cmd_restore(int argc, char **argv);

#endif
