# renew: build, test, install.
#   make                 build bin/tapdisk-renew, bin/tap-ctl-renew, bin/renew-img
#   make check           install test dependencies when missing, run every test
#   make check SANITIZE=1   the same under ASan + UBSan
#   make check VALGRIND=1   the same with the daemon and tools under valgrind
#   make install PREFIX=/usr/local DESTDIR=

CC      ?= cc
PREFIX  ?= /usr/local
CFLAGS  ?= -O2 -g
WARN     = -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CPPFLAGS += -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Ilib/vhd -Ilib/ctl -Itapdisk-glue
LDLIBS   = -laio -lz -pthread
BUILD   ?= build
BINDIR  ?= bin

ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
BUILD    = build-san
BINDIR   = bin-san
endif

VHD_SRC   := $(wildcard lib/vhd/*.c)
CTL_SRC   := $(wildcard lib/ctl/*.c)
RT_SRC    := $(filter-out tapdisk-glue/tapdisk-renew.c,$(wildcard tapdisk-glue/*.c)) $(wildcard drivers/*.c)
IMG_SRC   := $(wildcard tools/renew-img*.c tools/img-*.c)
TCTL_SRC  := $(wildcard tools/tap-ctl-renew*.c tools/ctl-*.c)
UNIT_SRC  := $(wildcard tests/unit/*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))

LIBVHD := $(BUILD)/libvhd.a
LIBCTL := $(BUILD)/libctl.a
LIBRT  := $(BUILD)/libtd.a
PROGS  := $(BINDIR)/tapdisk-renew $(BINDIR)/tap-ctl-renew $(BINDIR)/renew-img
UNITS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

all: $(PROGS) $(UNITS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -MMD -MP -c -o $@ $<

$(LIBVHD): $(call obj,$(VHD_SRC))
	@rm -f $@; $(AR) rcs $@ $^
$(LIBCTL): $(call obj,$(CTL_SRC))
	@rm -f $@; $(AR) rcs $@ $^
$(LIBRT): $(call obj,$(RT_SRC))
	@rm -f $@; $(AR) rcs $@ $^

$(BINDIR)/tapdisk-renew: $(call obj,tapdisk-glue/tapdisk-renew.c) $(LIBRT) $(LIBCTL) $(LIBVHD)
	@mkdir -p $(BINDIR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BINDIR)/tap-ctl-renew: $(call obj,$(TCTL_SRC)) $(LIBCTL)
	@mkdir -p $(BINDIR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BINDIR)/renew-img: $(call obj,$(IMG_SRC)) $(LIBRT) $(LIBCTL) $(LIBVHD)
	@mkdir -p $(BINDIR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIBRT) $(LIBCTL) $(LIBVHD)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

deps:
	@tests/install-deps.sh

check: deps all
	@BUILD=$(BUILD) BINDIR=$(BINDIR) VALGRIND=$(VALGRIND) tests/run $(TESTS)

install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BINDIR)/tapdisk-renew $(BINDIR)/tap-ctl-renew $(DESTDIR)$(PREFIX)/sbin/
	install -m 0755 $(BINDIR)/renew-img $(DESTDIR)$(PREFIX)/bin/

clean:
	rm -rf build build-san bin bin-san

.PHONY: all deps check install clean
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
