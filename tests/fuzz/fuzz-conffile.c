/* SPDX-License-Identifier: MIT */
/* libFuzzer target for aiotools-serve's config file parser (daemon/conffile.c).
 * The input is the file's text.  Beyond "no crash", it checks the contract of
 * conffile.h: -EINVAL with one non-empty line that starts "fuzz.conf:LINE: ",
 * and on success a merge that cli_parse() accepts or refuses with one line
 * (the file's options were each accepted alone, so only the whole
 * configuration's checks may refuse it).  LeakSanitizer checks that
 * conffile_free() frees everything. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conffile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(const char *err, size_t errlen)
{
        size_t len = strnlen(err, errlen);

        if (len == 0 || len == errlen || strchr(err, '\n') || strncmp(err, "fuzz.conf:", 10) != 0)
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char *argv[] = {(char *)"aiotools-serve", (char *)"-c", (char *)"fuzz.conf", NULL}, **merged, err[512];
        struct cli_config cmd, cfg;
        struct conf_file f;
        int n, r;

        if (cli_parse(3, argv, &cmd, err, sizeof(err)) < 0)
                abort();
        r = conffile_parse("fuzz.conf", (const char *)data, size, &f, err, sizeof(err));
        if (r < 0) {
                if (r != -EINVAL)
                        abort();
                check_error(err, sizeof(err));
                if (f.opts || f.args || f.module)
                        abort();
                return 0;
        }
        n = conffile_merge(&f, 3, argv, &cmd, &merged);
        if (n < 0 || merged[n])
                abort();
        if (cli_parse(n, merged, &cfg, err, sizeof(err)) < 0)
                abort();
        if (f.module && (!cfg.module || strcmp(cfg.module, f.module) != 0))
                abort();
        if (cfg.module_argc != f.n_args)
                abort();
        free(merged);
        conffile_free(&f);
        return 0;
}
