/* SPDX-License-Identifier: MIT */
/* libFuzzer target for the bind-address parser (aiot_listen_parse), numeric
 * mode only: no resolver, no sockets.  Beyond "no crash", it checks the
 * contract: a known error code with a one-line message, *out untouched on
 * failure, and on success a printed form that parses back to the same address. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aiotools/listen.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct aiot_bind_addr a, b, untouched;
        char err[256], buf[256];
        char *spec = malloc(size + 1);
        int r, len;

        if (!spec)
                return 0;
        memcpy(spec, data, size);
        spec[size] = '\0';
        memset(&a, 0xa5, sizeof(a));
        untouched = a;
        err[0] = '\0';
        r = aiot_listen_parse(spec, AIOT_LISTEN_NUMERIC, &a, err, sizeof(err));
        if (r < 0) {
                if (r != -EINVAL && r != -ERANGE && r != -ENAMETOOLONG)
                        abort();
                if (!err[0] || strchr(err, '\n') || memcmp(&a, &untouched, sizeof(a)) != 0)
                        abort();
        } else {
                if (r != 0 || a.len == 0 || a.len > sizeof(a.u))
                        abort();
                len = aiot_listen_format(&a, buf, sizeof(buf));
                if (len < 0 || (size_t)len >= sizeof(buf))
                        abort();
                if (aiot_listen_parse(buf, AIOT_LISTEN_NUMERIC, &b, NULL, 0) != 0)
                        abort();
                if (a.family != b.family || a.len != b.len || memcmp(&a.u, &b.u, a.len) != 0)
                        abort();
        }
        free(spec);
        return 0;
}
