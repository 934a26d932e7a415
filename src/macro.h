/* SPDX-License-Identifier: MIT */
/* Small helpers shared by the library's sources.  Internal: never installed. */
#ifndef AIOT_MACRO_H
#define AIOT_MACRO_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define AIOT_ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define AIOT_LIKELY(x) __builtin_expect(!!(x), 1)
#define AIOT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define AIOT_UNUSED __attribute__((unused))

/* Public entry points check their arguments and return an error, never abort. */
#define aiot__return_if(cond, err)                                                                           \
        do {                                                                                                 \
                if (AIOT_UNLIKELY(cond))                                                                     \
                        return (err);                                                                        \
        } while (0)

/* The container of a member (intrusive lists, watchers embedded in objects). */
#define aiot__container_of(ptr, type, member) ((type *)((char *)(ptr) - __builtin_offsetof(type, member)))

/* Closes fd if it is valid, preserving errno; returns -1 to assign back. */
static inline int aiot__close(int fd)
{
        if (fd >= 0) {
                int saved = errno;
                close(fd);
                errno = saved;
        }
        return -1;
}

static inline void aiot__closep(int *fd)
{
        *fd = aiot__close(*fd);
}

static inline void aiot__freep(void *p)
{
        free(*(void **)p);
}

/* int fd _cleanup_close_ = -1;  char *s _cleanup_free_ = NULL; */
#define _cleanup_close_ __attribute__((cleanup(aiot__closep)))
#define _cleanup_free_ __attribute__((cleanup(aiot__freep)))

/* Hands a pointer or fd out of a _cleanup_ variable. */
#define AIOT_TAKE_PTR(p)                                                                                     \
        ({                                                                                                   \
                __typeof__(p) _taken = (p);                                                                  \
                (p) = NULL;                                                                                  \
                _taken;                                                                                      \
        })
#define AIOT_TAKE_FD(fd)                                                                                     \
        ({                                                                                                   \
                int _taken = (fd);                                                                           \
                (fd) = -1;                                                                                   \
                _taken;                                                                                      \
        })

/* Writes v as 0x followed by lowercase hex digits to buf (at most 2 + 16
 * bytes, no NUL) and returns the length.  Async-signal-safe: the stack
 * overflow report is built with it inside the SIGSEGV handler. */
static inline size_t aiot__fmt_hex(char *buf, uintptr_t v)
{
        char tmp[2 * sizeof(v)];
        size_t n = 0, i = 0;

        do {
                tmp[n++] = "0123456789abcdef"[v & 15];
                v >>= 4;
        } while (v);
        buf[i++] = '0';
        buf[i++] = 'x';
        while (n)
                buf[i++] = tmp[--n];
        return i;
}

/* Retries a system call interrupted by a signal. */
#define AIOT_RETRY_EINTR(expr)                                                                               \
        ({                                                                                                   \
                __typeof__(expr) _r;                                                                         \
                do                                                                                           \
                        _r = (expr);                                                                         \
                while (_r < 0 && errno == EINTR);                                                            \
                _r;                                                                                          \
        })

#endif
