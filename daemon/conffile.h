/* SPDX-License-Identifier: MIT */
/* aiotools-serve's config file (-c FILE, aiotools-serve.conf(5)): a pure
 * parser like cli.h's.  Each "name = value" line becomes the long option
 * "--name=value" and is checked by cli_parse() itself, so that the file has
 * the command line's names and validation by construction. */
#ifndef AIOT_SERVE_CONFFILE_H
#define AIOT_SERVE_CONFFILE_H

#include <stddef.h>

#include "cli.h"

#define CONF_MAX_LINES 10000

struct conf_file {
        char **opts;    /* "--name=value" or "--flag", in the file's order */
        int n_opts;
        char *module;   /* "module = PATH", or NULL */
        char **args;    /* "arg = VALUE" lines: the module's arguments */
        int n_args;
        size_t n_binds; /* "bind" lines */
};

/* Parses the text of the file called name (for messages).  Returns 0, or
 * -EINVAL with one line in err, "NAME:LINE: ..." naming the bad value, or
 * -ENOMEM.  *f is then empty.  Never prints or exits. */
int conffile_parse(const char *name, const char *text, size_t len, struct conf_file *f, char *err,
                   size_t errlen);

void conffile_free(struct conf_file *f);

/* The argv that cli_parse() gets for the command line argc/argv (already
 * parsed into *cmd) with the file's settings merged in: argv[0], the file's
 * options, then the command line's, so that a value given on the command
 * line wins (--bind addresses on the command line replace the file's); the
 * file's module and arguments unless the command line names a MODULE (its
 * arguments after "--" win over the file's).  The array is NULL-terminated,
 * its strings point into f and argv, and it is freed with free().  Returns
 * the count, or -ENOMEM. */
int conffile_merge(const struct conf_file *f, int argc, char **argv, const struct cli_config *cmd,
                   char ***out);

#endif
