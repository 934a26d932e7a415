/* SPDX-License-Identifier: MIT */
/* Listener sets: which listening sockets each generation gets.
 *
 * The sockets opened at the start (socket activation first, then the bind
 * addresses) are set 0, for generation 1 on.  A reload whose hook gives other
 * bind addresses adds a set for the generation it starts: an address both
 * sets name keeps its socket (the same object: no connection in its backlog
 * is lost), a new one is bound before anything is forked, so a bind failure
 * refuses the reload with the reason, and sockets from socket activation are
 * in every set.  A generation listens on the newest set whose first
 * generation is not after it (lset_of()).  A set goes once no generation that
 * uses it is left (aiot__lsets_sweep(), from the retirement check): its
 * sockets that no remaining set holds are closed then, so that an address
 * removed at a reload still serves the old generation while it drains.  A
 * failed reload drops the set it added and what that set alone opened.
 *
 * Set 0's arrays are the server's listeners and lview (the main context's
 * view, freed at exit by supervisor.c); a closed socket of set 0 is only
 * closed there (fd -1), its object freed at exit.  Every other set owns its
 * arrays and the sockets it opened. */
#define AIOT__SUPERVISOR_SIDE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aiotools/log.h"
#include "macro.h"
#include "server-internal.h"

static void lset_free(struct lset *s)
{
        if (!s)
                return;
        for (size_t i = 0; i < s->n; i++)
                free(s->binds ? s->binds[i] : NULL);
        free(s->binds);
        if (s->owns_arrays) {
                free(s->ls);
                free(s->views);
        }
        free(s);
}

/* Set 0, over the sockets aiot__open_listeners() opened. */
int aiot__lsets_init(struct server *srv, const char *const *binds, size_t n_binds)
{
        struct lset *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        s->first_gen = 1;
        s->ls = srv->listeners;
        s->views = srv->lview;
        s->n = srv->n_listeners;
        s->n_activated = srv->n_activated;
        s->binds = s->n ? calloc(s->n, sizeof(*s->binds)) : NULL;
        if (s->n && !s->binds) {
                free(s);
                return -ENOMEM;
        }
        for (size_t i = s->n_activated; i < s->n && i - s->n_activated < n_binds; i++)
                if (!(s->binds[i] = strdup(binds[i - s->n_activated]))) {
                        lset_free(s);
                        return -ENOMEM;
                }
        srv->lsets[0] = s;
        srv->n_lsets = 1;
        return 0;
}

void aiot__lsets_free(struct server *srv)
{
        /* Set 0's sockets of a plain start are freed with srv->listeners;
         * what a set opened (or an upgrade handed over) here. */
        for (size_t i = 0; i < srv->n_lsets; i++) {
                struct lset *s = srv->lsets[i];

                for (size_t j = 0; s->opened && j < s->n; j++)
                        if (s->opened[j])
                                aiot_listener_close(s->ls[j]);
                free(s->opened);
                lset_free(s);
        }
        srv->n_lsets = 0;
}

/* The set generation gen listens on, or NULL when the server has none. */
const struct lset *aiot__lset_of(const struct server *srv, unsigned gen)
{
        for (size_t i = srv->n_lsets; i-- > 0;)
                if (srv->lsets[i]->first_gen <= gen)
                        return srv->lsets[i];
        return srv->n_lsets ? srv->lsets[0] : NULL;
}

static bool lset_has(const struct lset *s, const aiot_listener *l)
{
        for (size_t i = 0; i < s->n; i++)
                if (s->ls[i] == l)
                        return true;
        return false;
}

static bool held_elsewhere(const struct server *srv, const struct lset *except, const aiot_listener *l)
{
        for (size_t i = 0; i < srv->n_lsets; i++)
                if (srv->lsets[i] != except && lset_has(srv->lsets[i], l))
                        return true;
        return false;
}

/* The socket of the newest set bound from the same string, or NULL. */
static aiot_listener *find_bind(const struct server *srv, const char *bind)
{
        const struct lset *s = srv->lsets[srv->n_lsets - 1];

        for (size_t i = s->n_activated; i < s->n; i++)
                if (s->binds[i] && strcmp(s->binds[i], bind) == 0 && s->ls[i]->fd >= 0)
                        return s->ls[i];
        return NULL;
}

/* Whether binds names exactly the newest set's addresses, in its order. */
static bool same_binds(const struct server *srv, const char *const *binds, size_t n)
{
        const struct lset *s = srv->lsets[srv->n_lsets - 1];

        if (s->n - s->n_activated != n)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!binds[i] || !s->binds[s->n_activated + i] || strcmp(binds[i], s->binds[s->n_activated + i]))
                        return false;
        return true;
}

/* A socket set s opened and a later set still holds: that set closes it. */
static void pass_ownership(struct server *srv, struct lset *s, size_t j)
{
        if (!s->opened || !s->opened[j])
                return;
        for (size_t i = 0; i < srv->n_lsets; i++) {
                struct lset *t = srv->lsets[i];

                for (size_t k = 0; t != s && t->opened && k < t->n; k++)
                        if (t->ls[k] == s->ls[j]) {
                                t->opened[k] = true;
                                return;
                        }
        }
}

/* Removes set s (its index i): closes what no other set holds. */
static void lset_remove(struct server *srv, size_t i)
{
        struct lset *s = srv->lsets[i];

        for (size_t j = s->n_activated; j < s->n; j++) {
                aiot_listener *l = s->ls[j];

                if (held_elsewhere(srv, s, l)) {
                        pass_ownership(srv, s, j);
                        continue;
                }
                if (l->fd < 0)
                        continue;
                aiot_log(AIOT_LOG_NOTICE, "no longer listening on %s", l->address);
                if (s->opened && s->opened[j]) {
                        aiot_listener_close(l);
                        continue;
                }
                l->fd = aiot__close(l->fd);
                /* Set 0: the main context's view of it too. */
                for (size_t k = 0; k < srv->n_listeners; k++)
                        if (srv->listeners[k] == l)
                                srv->lview[k].fd = -1;
        }
        free(s->opened);
        lset_free(s);
        memmove(srv->lsets + i, srv->lsets + i + 1, (srv->n_lsets - i - 1) * sizeof(*srv->lsets));
        srv->n_lsets--;
}

/* For the generation gen a reload starts: a new set when binds differs from
 * the newest one.  0 (nothing to do, or the set added), or -1 with why. */
int aiot__lset_change(struct server *srv, unsigned gen, const char *const *binds, size_t n_binds, char *why,
                      size_t len)
{
        struct aiot_listen_opts o = {.size = sizeof(o), .reuseport = srv->reuseport, .bind_only = srv->reuseport};
        const struct lset *cur;
        struct lset *s;
        char err[256];

        if (!srv->n_lsets || same_binds(srv, binds, n_binds))
                return 0;
        if (srv->n_lsets == MAX_LSETS) {
                snprintf(why, len, "bind addresses changed while %d older sets still drain", MAX_LSETS - 1);
                return -1;
        }
        if (srv->reuseport && n_binds == 0) {
                snprintf(why, len, "reuseport needs at least one bind address");
                return -1;
        }
        cur = srv->lsets[srv->n_lsets - 1];
        s = calloc(1, sizeof(*s));
        if (!s)
                goto oom;
        s->first_gen = gen;
        s->owns_arrays = true;
        s->n_activated = cur->n_activated;
        s->n = cur->n_activated + n_binds;
        s->ls = calloc(s->n ? s->n : 1, sizeof(*s->ls));
        s->views = calloc(s->n ? s->n : 1, sizeof(*s->views));
        s->binds = calloc(s->n ? s->n : 1, sizeof(*s->binds));
        s->opened = calloc(s->n ? s->n : 1, sizeof(*s->opened));
        if (!s->ls || !s->views || !s->binds || !s->opened)
                goto oom;
        for (size_t i = 0; i < s->n_activated; i++)
                s->ls[i] = cur->ls[i];
        for (size_t i = 0; i < n_binds; i++) {
                size_t j = s->n_activated + i;

                if (!binds[i] || !(s->binds[j] = strdup(binds[i])))
                        goto oom;
                if ((s->ls[j] = find_bind(srv, binds[i])))
                        continue;
                if (aiot_listen_open(binds[i], &o, &s->ls[j], err, sizeof(err)) < 0) {
                        snprintf(why, len, "%s", err);
                        goto fail;
                }
                s->opened[j] = true;
        }
        for (size_t i = 0; i < s->n; i++) {
                s->views[i] = *s->ls[i];
                if (s->opened[i])
                        aiot_log(AIOT_LOG_NOTICE, "reload: generation %u also listens on %s%s", gen,
                                 s->ls[i]->address, srv->reuseport ? " (reuseport)" : "");
        }
        for (size_t i = cur->n_activated; i < cur->n; i++)
                if (!lset_has(s, cur->ls[i]))
                        aiot_log(AIOT_LOG_NOTICE,
                                 "reload: generation %u does not listen on %s; closed once the generations "
                                 "before it have drained", gen, cur->ls[i]->address);
        srv->lsets[srv->n_lsets++] = s;
        return 0;
oom:
        snprintf(why, len, "out of memory");
fail:
        if (s) {
                for (size_t i = s->n_activated; s->opened && i < s->n; i++)
                        if (s->opened[i])
                                aiot_listener_close(s->ls[i]);
                free(s->opened);
                lset_free(s);
        }
        return -1;
}

/* A failed reload: the set it added for gen goes, with what it opened. */
void aiot__lset_drop(struct server *srv, unsigned gen)
{
        if (srv->n_lsets > 1 && srv->lsets[srv->n_lsets - 1]->first_gen == gen)
                lset_remove(srv, srv->n_lsets - 1);
}

static bool gen_open(const struct server *srv, unsigned from, unsigned to)
{
        for (size_t i = 0; i < srv->n_open_gens; i++)
                if (srv->open_gens[i] >= from && srv->open_gens[i] < to)
                        return true;
        return false;
}

/* After a retirement: every set but the newest that no open generation uses
 * goes. */
void aiot__lsets_sweep(struct server *srv)
{
        for (size_t i = 0; i + 1 < srv->n_lsets;) {
                if (!gen_open(srv, srv->lsets[i]->first_gen, srv->lsets[i + 1]->first_gen))
                        lset_remove(srv, i);
                else
                        i++;
        }
}

/* The final stop: the supervisor's copies of every socket close. */
void aiot__lsets_close_all(struct server *srv)
{
        for (size_t i = 0; i < srv->n_lsets; i++) {
                struct lset *s = srv->lsets[i];

                for (size_t j = 0; j < s->n; j++) {
                        s->ls[j]->fd = aiot__close(s->ls[j]->fd);
                        s->views[j].fd = -1;
                }
        }
}

/* Whether fd is a socket of any set (the snapshots leave them out). */
bool aiot__lsets_has_fd(const struct server *srv, int fd)
{
        for (size_t i = 0; i < srv->n_lsets; i++)
                if (aiot__is_listener_fd(srv->lsets[i]->ls, srv->lsets[i]->n, fd))
                        return true;
        return false;
}
