# renew: build, test, install.
#   make                 build bin/tapdisk-renew, bin/tap-ctl-renew, bin/renew-img
#   make check           install test dependencies when missing, run every test
#   make check SANITIZE=1   the same under ASan + UBSan
#   make check VALGRIND=1   the same with the daemon and tools under valgrind
#   make soak            a long randomized soak of a live disk (SOAK_SECS=600)
#   make install PREFIX=/usr/local DESTDIR=

CC      ?= cc
PREFIX  ?= /usr/local
MANDIR  ?= $(PREFIX)/share/man
XEN_SCRIPTS ?= /etc/xen/scripts
CFLAGS  ?= -O2 -g
WARN     = -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CPPFLAGS += -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Ilib/vhd -Ilib/ctl -Ilib/history -Itapdisk-glue
LDLIBS   = -laio -lz -lcrypto -pthread
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
HIST_SRC  := $(wildcard lib/history/*.c)
RT_SRC    := $(filter-out tapdisk-glue/tapdisk-renew.c,$(wildcard tapdisk-glue/*.c)) $(wildcard drivers/*.c)
IMG_SRC   := $(wildcard tools/renew-img*.c tools/img-*.c)
TCTL_SRC  := $(wildcard tools/tap-ctl-renew*.c tools/ctl-*.c)
UNIT_SRC  := $(wildcard tests/unit/*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))

LIBVHD := $(BUILD)/libvhd.a
LIBCTL := $(BUILD)/libctl.a
LIBHIST := $(BUILD)/libhist.a
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
$(LIBHIST): $(call obj,$(HIST_SRC))
	@rm -f $@; $(AR) rcs $@ $^

$(BINDIR)/tapdisk-renew: $(call obj,tapdisk-glue/tapdisk-renew.c) $(LIBRT) $(LIBHIST) $(LIBCTL) $(LIBVHD)
	@mkdir -p $(BINDIR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BINDIR)/tap-ctl-renew: $(call obj,$(TCTL_SRC)) $(LIBCTL)
	@mkdir -p $(BINDIR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BINDIR)/renew-img: $(call obj,$(IMG_SRC)) $(LIBRT) $(LIBHIST) $(LIBCTL) $(LIBVHD)
	@mkdir -p $(BINDIR)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIBRT) $(LIBHIST) $(LIBCTL) $(LIBVHD)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

deps:
	@tests/install-deps.sh

demo: deps all
	@scripts/demo.sh

check: deps all
	@BUILD=$(BUILD) BINDIR=$(BINDIR) VALGRIND=$(VALGRIND) tests/run $(TESTS)

# A Linux guest under QEMU on our NBD export, renewed live (tests/vm/).
check-vm: all
	@BINDIR=$(BINDIR) tests/vm/check-vm.sh

# A long randomized soak of a live disk (tests/soak.py): SOAK_SECS, SOAK_SEED.
soak: deps all
	@BUILD=$(BUILD) BINDIR=$(BINDIR) SOAK_SECS=$${SOAK_SECS:-600} SOAK_SEED=$${SOAK_SEED:-random} \
		TEST_TIMEOUT=$$(( $${SOAK_SECS:-600} + 600 )) tests/run tests/t-soak.sh

# A Xen 4.17 host under QEMU: xl block-attach, live renew, detach (tests/xen/).
check-xen: all
	@BINDIR=$(BINDIR) tests/xen/check-xen.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BINDIR)/tapdisk-renew $(BINDIR)/tap-ctl-renew $(DESTDIR)$(PREFIX)/sbin/
	install -m 0755 $(BINDIR)/renew-img $(DESTDIR)$(PREFIX)/bin/
	install -d $(DESTDIR)$(XEN_SCRIPTS) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	sed 's|^RENEW_SBIN=.*|RENEW_SBIN=$(PREFIX)/sbin|' scripts/block-renew >$(DESTDIR)$(XEN_SCRIPTS)/block-renew
	chmod 0755 $(DESTDIR)$(XEN_SCRIPTS)/block-renew
	@scripts/install-tap-ctl "$(DESTDIR)" "$(PREFIX)"
	install -m 0644 man/renew-img.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/tapdisk-renew.8 man/tap-ctl-renew.8 $(DESTDIR)$(MANDIR)/man8/

clean:
	rm -rf build build-san bin bin-san

.PHONY: all deps demo check install clean check-vm check-xen soak
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
