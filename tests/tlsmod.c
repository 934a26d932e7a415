/* SPDX-License-Identifier: MIT */
/* tlsmod: the module tests/proof-tls.sh loads.  A connection handler that
 * answers each line with what the connection says of itself:
 *
 *   "pid=P index=I tls=T alpn=A len=N\n"
 *
 * (T from aiot_conn_tls(3), A the protocol ALPN chose or "-", N the line's
 * length), and keeps the connection; "big N\n" answers N bytes of 'x' and a
 * newline instead, sent with aiot_conn_sendfile(3) from a temporary file, so
 * that the TLS fallback of sendfile is exercised.  It declares
 * tls_alpn = "tlsmod,http/1.1", so that a proof can tell the module's list
 * from --tls-alpn's. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <aiotools.h>

/* N bytes of 'x' and a newline, through sendfile. */
static int send_big(aiot_conn *c, long n)
{
        char path[] = "/tmp/tlsmod-XXXXXX", block[4096];
        int fd = mkstemp(path);
        off_t off = 0;
        ssize_t sent;

        if (fd < 0 || n < 0)
                return fd < 0 ? -errno : -EINVAL;
        unlink(path);
        memset(block, 'x', sizeof(block));
        for (long left = n; left > 0;) {
                size_t k = left < (long)sizeof(block) ? (size_t)left : sizeof(block);

                if (write(fd, block, k) != (ssize_t)k) {
                        close(fd);
                        return -EIO;
                }
                left -= (long)k;
        }
        if (write(fd, "\n", 1) != 1) {
                close(fd);
                return -EIO;
        }
        sent = aiot_conn_sendfile(c, fd, &off, (size_t)n + 1);
        close(fd);
        return sent < 0 ? (int)sent : sent == n + 1 ? AIOT_CONN_KEEP : -EIO;
}

static int tls_conn(aiot_conn *c, void *arg)
{
        const char *data, *alpn = NULL;
        char line[128];
        ssize_t n = aiot_conn_read_until(c, "\n", 4096, &data);
        int tls, len;

        (void)arg;
        if (n <= 0)
                return (int)n;
        if (n > 4 && memcmp(data, "big ", 4) == 0)
                return send_big(c, atol(data + 4));
        tls = aiot_conn_tls(c, &alpn);
        len = snprintf(line, sizeof(line), "pid=%d index=%d tls=%d alpn=%s len=%zd\n", (int)getpid(),
                       aiot_worker_index(aiot_conn_worker(c)), tls, alpn ? alpn : "-", n - 1);
        return aiot_conn_write(c, line, (size_t)len) < 0 ? -EIO : AIOT_CONN_KEEP;
}

const struct aiot_module aiot_module = {
        .abi = AIOT_MODULE_ABI,
        .name = "tlsmod",
        .conn = tls_conn,
        .tls_alpn = "tlsmod,http/1.1",
};
