/* SPDX-License-Identifier: MIT */
/* Generations: what happens to the set of processes as a whole.
 *
 * Processes belong to a generation.  A reload (SIGHUP) starts a whole new
 * generation beside the serving one and stops the old one only once every
 * new process is ready; a new process that fails its setup rolls the reload
 * back (aiot__reload_fail(), from proc.c).  A recycled worker gets a replacement
 * record of its own generation and index in the same way.  SIGTTIN and
 * SIGTTOU add and remove a worker of the newest generation; SIGUSR1 is
 * forwarded to every ready process; SIGUSR2 upgrades the program in place
 * (upgrade.c), SIGWINCH is logged and otherwise ignored.  Everything here changes processes only through
 * aiot__proc_transition().
 *
 * The config's reload hook (aiotools-serve loads the module afresh there)
 * runs before a reload forks anything and may change what the new generation
 * runs; the serving generation's settings are kept aside until the new one is
 * ready, and put back if it fails.  Each generation is reported retired
 * (the retired hook) once none of its processes is left.  A reload asked
 * while an older generation still drains waits until it has gone (its drain
 * is bounded by the stop timeout), so that a SIGHUP storm leaves at most one
 * draining generation beside the serving one and kills no connection. */
#define AIOT__SUPERVISOR_SIDE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aiotools/fork.h"
#include "aiotools/log.h"
#include "server-internal.h"

static void reload_start(struct server *srv);
static void reload_next(struct server *srv);
static void recycle_pending(struct server *srv);

/* ---------------------------------------------------------------- counting */

/* Every active process of generation gen is ready (and there is one). */
bool aiot__gen_ready(const struct server *srv, unsigned gen)
{
        size_t n = 0;

        for (size_t i = 0; i < srv->n_procs; i++) {
                const struct proc *p = srv->procs[i];

                if (p->gen != gen || !aiot__proc_active(p))
                        continue;
                if (p->state != PROC_READY)
                        return false;
                n++;
        }
        return n > 0;
}

/* The workers of gen (replacements not counted), the one with the highest
 * index, and the lowest free index. */
size_t aiot__gen_workers(const struct server *srv, unsigned gen, struct proc **highest, int *free_index)
{
        size_t n = 0;
        bool used[MAX_WORKERS + 1] = {false};

        if (highest)
                *highest = NULL;
        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];

                if (p->gen != gen || p->kind != AIOT_WORKER || !aiot__proc_active(p) || p->replaces)
                        continue;
                n++;
                if (p->index >= 0 && p->index <= MAX_WORKERS)
                        used[p->index] = true;
                if (highest && (!*highest || p->index > (*highest)->index))
                        *highest = p;
        }
        if (free_index) {
                int f = 0;

                while (f < MAX_WORKERS && used[f])
                        f++;
                *free_index = f;
        }
        return n;
}

static void stop_generation_if(struct server *srv, bool (*match)(const struct proc *, unsigned),
                               unsigned gen)
{
        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];

                if (match(p, gen) && aiot__proc_active(p))
                        aiot__proc_transition(p, PE_STOP, aiot__graceful_signal(srv));
        }
}

static bool older_than(const struct proc *p, unsigned gen)
{
        return p->gen < gen;
}

static bool of_gen(const struct proc *p, unsigned gen)
{
        return p->gen == gen;
}

/* ---------------------------------------------------------------- retirement */

/* Remembers that gen has (or will have) processes, for its retirement. */
int aiot__gen_open(struct server *srv, unsigned gen)
{
        if (srv->n_open_gens == srv->cap_open_gens) {
                size_t cap = srv->cap_open_gens ? srv->cap_open_gens * 2 : 8;
                unsigned *ng = realloc(srv->open_gens, cap * sizeof(*ng));

                if (!ng)
                        return -ENOMEM;
                srv->open_gens = ng;
                srv->cap_open_gens = cap;
        }
        srv->open_gens[srv->n_open_gens++] = gen;
        return 0;
}

static bool gen_has_procs(const struct server *srv, unsigned gen)
{
        for (size_t i = 0; i < srv->n_procs; i++)
                if (srv->procs[i]->gen == gen && srv->procs[i]->state != PROC_GONE)
                        return true;
        return false;
}

/* After a process went for good: every generation that is neither serving nor
 * starting and has no process left is retired (reported once). */
void aiot__gen_check_retired(struct server *srv)
{
        size_t k = 0;

        for (size_t i = 0; i < srv->n_open_gens; i++) {
                unsigned g = srv->open_gens[i];

                if ((srv->state != SRV_STOPPING && (g == srv->gen || g == srv->new_gen)) ||
                    gen_has_procs(srv, g)) {
                        srv->open_gens[k++] = g;
                        continue;
                }
                aiot_log(AIOT_LOG_DEBUG, "generation %u retired", g);
                if (srv->retired_fn)
                        srv->retired_fn(g, srv->reload_arg);
        }
        srv->n_open_gens = k;
        aiot__lsets_sweep(srv);
        /* A reload that waited for a drain may start now. */
        reload_next(srv);
}

/* ---------------------------------------------------------------- reload */

/* What the running generation was started with, as a reload hook sees it. */
static void reload_current(const struct server *srv, unsigned gen, struct aiot_server_reload *r)
{
        *r = (struct aiot_server_reload){
                .size = sizeof(*r),
                .gen = gen,
                .workers = (int)srv->n_workers,
                .worker = srv->worker_fn,
                .extra = srv->extra_fns,
                .n_extra = srv->n_extra,
                .argc = srv->argc,
                .argv = srv->argv,
                .stop_timeout = srv->stop_timeout,
                .restart_limit = srv->restart_limit,
                .restart_window = srv->restart_window,
                .max_lifetime = srv->max_lifetime,
                .lifetime_jitter = srv->lifetime_jitter,
                .max_rss = srv->max_rss,
                .max_requests = srv->max_requests,
                .requests_jitter = srv->requests_jitter,
        };
        /* The newest set's addresses: a hook that leaves them keeps the sockets. */
        if (srv->n_lsets) {
                const struct lset *ls = srv->lsets[srv->n_lsets - 1];

                r->binds = (const char *const *)ls->binds + ls->n_activated;
                r->n_binds = ls->n - ls->n_activated;
        }
}

static void reload_apply(struct server *srv, const struct aiot_server_reload *r)
{
        srv->n_workers = (size_t)r->workers;
        srv->worker_fn = r->worker;
        srv->extra_fns = r->extra;
        srv->n_extra = r->n_extra;
        srv->argc = r->argc;
        srv->argv = r->argv;
        srv->stop_timeout = r->stop_timeout;
        srv->restart_limit = r->restart_limit;
        srv->restart_window = r->restart_window;
        srv->max_lifetime = r->max_lifetime;
        srv->lifetime_jitter = r->lifetime_jitter;
        srv->max_rss = r->max_rss;
        srv->max_requests = r->max_requests;
        srv->requests_jitter = r->requests_jitter;
        aiot__policy_start(srv);
}

/* Runs the reload hook for generation gen.  Returns 0 (applied, the serving
 * generation's settings saved), or -1 with the reason in why. */
static int reload_hook(struct server *srv, unsigned gen, char *why, size_t len)
{
        struct aiot_server_reload r;
        int rc;

        if (!srv->reload_fn)
                return 0;
        reload_current(srv, gen, &r);
        srv->serving = r;
        rc = srv->reload_fn(&r, srv->reload_arg);
        r.why[sizeof(r.why) - 1] = '\0';
        if (rc < 0) {
                snprintf(why, len, "%s", r.why[0] ? r.why : strerror(-rc));
                return -1;
        }
        if (!r.worker || r.workers < 1 || r.workers > MAX_WORKERS || r.n_extra > MAX_WORKERS ||
            (r.n_extra && !r.extra) || r.argc < 0 || r.restart_limit < 1 || !(r.restart_window > 0) ||
            isnan(r.stop_timeout) || !(r.max_lifetime >= 0) || !(r.lifetime_jitter >= 0) ||
            isinf(r.max_lifetime) || isinf(r.lifetime_jitter)) {
                snprintf(why, len, "the reload hook gave an invalid configuration");
                return -1;
        }
        for (size_t i = 0; i < r.n_extra; i++)
                if (!r.extra[i]) {
                        snprintf(why, len, "the reload hook gave extra process %zu no function", i);
                        return -1;
                }
        /* New addresses are bound before anything is forked: a failure refuses the reload. */
        if ((r.n_binds && !r.binds) || aiot__lset_change(srv, gen, r.binds, r.n_binds, why, len) < 0) {
                if (r.n_binds && !r.binds)
                        snprintf(why, len, "the reload hook gave %zu bind addresses and no array", r.n_binds);
                return -1;
        }
        reload_apply(srv, &r);
        srv->reload_applied = true;
        return 0;
}

/* A generation older than the serving one that still has processes (it
 * drains), or 0. */
unsigned aiot__gen_draining(const struct server *srv)
{
        for (size_t i = 0; i < srv->n_procs; i++)
                if (srv->procs[i]->gen < srv->gen && aiot__proc_live(srv->procs[i]))
                        return srv->procs[i]->gen;
        return 0;
}

static void reload_next(struct server *srv)
{
        if (srv->reload_pending && srv->state == SRV_RUNNING && !srv->new_gen && !aiot__gen_draining(srv)) {
                srv->reload_pending = false;
                reload_start(srv);
        }
}

static void server_all_ready(struct server *srv)
{
        char status[96];

        srv->state = SRV_RUNNING;
        aiot_log(AIOT_LOG_NOTICE, "ready: %zu worker%s, %zu extra process%s (pid %d)", srv->n_workers,
                 srv->n_workers == 1 ? "" : "s", srv->n_extra, srv->n_extra == 1 ? "" : "es", (int)srv->pid);
        aiot_log(AIOT_LOG_NOTICE, "all %zu workers ready (generation %u)", srv->n_workers, srv->gen);
        aiot__status_text(srv, status, sizeof(status));
        aiot__notify(srv, AIOT__SD_READY, status);
        recycle_pending(srv);
        reload_next(srv);
}

static void reload_done(struct server *srv)
{
        unsigned old = srv->gen;
        char status[96];

        srv->gen = srv->new_gen;
        srv->new_gen = 0;
        srv->reloads_done++;
        srv->reload_applied = false;
        if (srv->upgrading) {
                srv->upgrading = false;
                srv->upgrades_done++;
                aiot_log(AIOT_LOG_NOTICE, "upgrade: generation %u of the new program is ready (pid %d)", srv->gen,
                         (int)srv->pid);
        }
        aiot_log(AIOT_LOG_NOTICE, "reload: generation %u ready, stopping generation %u", srv->gen, old);
        aiot__control_reload_ended(srv, srv->gen, NULL);
        stop_generation_if(srv, older_than, srv->gen);
        aiot__status_text(srv, status, sizeof(status));
        aiot__notify(srv, AIOT__SD_READY, status);
        recycle_pending(srv);
        reload_next(srv);
}

/* The new generation failed: it is stopped, the serving one goes on. */
void aiot__reload_fail(struct server *srv, const char *why)
{
        unsigned failed = srv->new_gen;
        char status[384], st[96];

        srv->new_gen = 0;
        srv->reloads_failed++;
        aiot__lset_drop(srv, failed);
        if (srv->reload_applied) {
                reload_apply(srv, &srv->serving);
                srv->reload_applied = false;
        }
        if (srv->upgrading) {
                srv->upgrading = false;
                srv->upgrades_failed++;
                aiot_log(AIOT_LOG_ERR, "upgrade failed: the new program's generation %u did not start; the adopted "
                         "generation %u serves on", failed, srv->gen);
        }
        aiot_log(AIOT_LOG_ERR, "reload failed: %s; generation %u keeps serving", why, srv->gen);
        aiot__control_reload_ended(srv, failed, why);
        stop_generation_if(srv, of_gen, failed);
        aiot__status_text(srv, st, sizeof(st));
        snprintf(status, sizeof(status), "reload failed: %s; %s", why, st);
        aiot__notify(srv, AIOT__SD_READY, status);
        aiot__gen_check_retired(srv);
        reload_next(srv);
}

/* A reload, or (use_hook false) an upgraded image's own first generation:
 * no hook (the image has just loaded its code), the config's addresses. */
static void generation_start(struct server *srv, bool use_hook)
{
        char status[64], why[300];
        unsigned gen;

        if (srv->state == SRV_STARTING || srv->new_gen) {
                aiot_log(AIOT_LOG_NOTICE, "SIGHUP received during %s: another reload follows it",
                         srv->new_gen ? "a reload" : "the start");
                srv->reload_pending = true;
                return;
        }
        if (srv->state != SRV_RUNNING)
                return;
        /* At most one draining generation: a reload waits until the one
         * before has gone (its drain, bounded by the stop timeout) rather
         * than killing it with its connections. */
        if (aiot__gen_draining(srv)) {
                if (!srv->reload_pending)
                        aiot_log(AIOT_LOG_NOTICE, "reload waits for generation %u to drain (at most one draining generation)",
                                 aiot__gen_draining(srv));
                srv->reload_pending = true;
                return;
        }
        gen = srv->new_gen = ++srv->next_gen;
        aiot__control_reload_started(srv, gen);
        if (use_hook)
                aiot_log(AIOT_LOG_NOTICE, "SIGHUP received, reloading: starting generation %u", gen);
        else
                aiot_log(AIOT_LOG_NOTICE, "upgrade: starting generation %u of the new program", gen);
        snprintf(status, sizeof(status), "%s: starting generation %u", use_hook ? "reloading" : "upgrading", gen);
        aiot__notify(srv, AIOT__SD_RELOADING, status);
        if (aiot__gen_open(srv, gen) < 0) {
                aiot__reload_fail(srv, "out of memory");
                return;
        }
        if (use_hook ? reload_hook(srv, gen, why, sizeof(why)) < 0
                     : aiot__lset_change(srv, gen, srv->cfg_binds, srv->n_cfg_binds, why, sizeof(why)) < 0) {
                aiot__reload_fail(srv, why);
                return;
        }
        for (size_t i = 0; i < srv->n_workers + srv->n_extra && srv->new_gen == gen; i++) {
                bool extra = i >= srv->n_workers;
                struct proc *p = aiot__proc_new(srv, extra ? AIOT_EXTRA : AIOT_WORKER,
                                                (int)(extra ? i - srv->n_workers : i), gen,
                                                extra ? srv->extra_fns[i - srv->n_workers] : srv->worker_fn);

                if (!p) {
                        aiot__reload_fail(srv, "out of memory");
                        return;
                }
                aiot__proc_transition(p, PE_START, 0);
        }
}

static void reload_start(struct server *srv)
{
        generation_start(srv, true);
}

void aiot__upgrade_new_generation(struct server *srv)
{
        srv->upgrading = true;
        generation_start(srv, false);
}

/* ---------------------------------------------------------------- recycle */

void aiot__recycle_start(struct proc *p)
{
        struct server *srv = p->srv;
        struct proc *r;

        p->recycle_asked = false;
        /* Asked before its generation was all ready: once it is. */
        if (p->state == PROC_READY &&
            (srv->state == SRV_STARTING || (srv->new_gen && p->gen == srv->new_gen))) {
                p->recycle_asked = true;
                return;
        }
        if (srv->state != SRV_RUNNING || srv->new_gen || p->gen != srv->gen || p->replaced_by ||
            p->replaces || p->state != PROC_READY) {
                aiot_log(AIOT_LOG_INFO, "%s %d (pid %d) asked to be recycled: ignored (%s)",
                         aiot__kind_name(p->kind), p->index, (int)p->pid,
                         srv->state != SRV_RUNNING ? "not running"
                         : srv->new_gen            ? "a reload is under way"
                                                   : "it is being replaced");
                return;
        }
        r = aiot__proc_new(srv, p->kind, p->index, p->gen, p->fn);
        if (!r) {
                aiot_log(AIOT_LOG_ERR, "cannot recycle %s %d: out of memory", aiot__kind_name(p->kind),
                         p->index);
                return;
        }
        r->replaces = p;
        p->replaced_by = r;
        aiot_log(AIOT_LOG_NOTICE, "%s %d (pid %d) asked to be recycled; starting its replacement",
                 aiot__kind_name(p->kind), p->index, (int)p->pid);
        aiot__proc_transition(r, PE_START, 0);
}

static void recycle_pending(struct server *srv)
{
        for (size_t i = 0; i < srv->n_procs; i++)
                if (srv->procs[i]->recycle_asked && srv->procs[i]->state == PROC_READY)
                        aiot__recycle_start(srv->procs[i]);
}

static void recycle_done(struct proc *r)
{
        struct proc *old = r->replaces;

        r->replaces = NULL;
        old->replaced_by = NULL;
        aiot_log(AIOT_LOG_NOTICE, "%s %d (pid %d) replaced by pid %d", aiot__kind_name(old->kind),
                 old->index, (int)old->pid, (int)r->pid);
        aiot__proc_transition(old, PE_STOP, aiot__graceful_signal(r->srv));
}

/* ---------------------------------------------------------------- recycling policies */

/* The handler runs a worker's serving layer has counted in its status record. */
static uint64_t proc_requests(const struct server *srv, const struct proc *p)
{
        if (p->beat < 0 || !srv->stats)
                return 0;
        return __atomic_load_n(&srv->stats[p->beat].requests, __ATOMIC_RELAXED);
}

/* A worker the policies may replace now: ready, serving, not being replaced,
 * and no reload or stop under way. */
static bool policy_may_recycle(const struct server *srv, const struct proc *p)
{
        return srv->state == SRV_RUNNING && !srv->new_gen && p->kind == AIOT_WORKER && p->state == PROC_READY &&
               p->gen == srv->gen && !p->replaced_by && !p->replaces && p->child;
}

static void policy_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct server *srv = w->data;
        double now = aiot__now_mono();

        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];
                size_t rss;

                if (!policy_may_recycle(srv, p))
                        continue;
                if (srv->max_lifetime > 0 && now - p->ready_at >= p->lifetime) {
                        aiot_log(AIOT_LOG_NOTICE, "worker %d (pid %d) has served %.2f s, its lifetime: recycling it",
                                 p->index, (int)p->pid, now - p->ready_at);
                        aiot__recycle_start(p);
                } else if (p->request_limit > 0 && proc_requests(srv, p) >= p->request_limit) {
                        aiot_log(AIOT_LOG_NOTICE, "worker %d (pid %d) has served %llu requests, its limit %llu: "
                                 "recycling it", p->index, (int)p->pid, (unsigned long long)proc_requests(srv, p),
                                 (unsigned long long)p->request_limit);
                        aiot__recycle_start(p);
                } else if (srv->max_rss > 0 && (rss = aiot__proc_rss(p->pid)) > srv->max_rss) {
                        aiot_log(AIOT_LOG_NOTICE,
                                 "worker %d (pid %d) uses %zu KiB, more than its memory limit of %zu KiB: "
                                 "recycling it", p->index, (int)p->pid, rss >> 10, srv->max_rss >> 10);
                        aiot__recycle_start(p);
                }
        }
}

/* The policy tick: a tenth of the lifetime, at most a second; a twentieth of a
 * second with a request limit (a worker serves on while it is counted, so
 * the tick bounds how far past its limit it goes). */
void aiot__policy_start(struct server *srv)
{
        double period = srv->max_requests ? 0.05 : 1.0;

        if (!srv->evl || (srv->max_lifetime <= 0 && srv->max_rss == 0 && srv->max_requests == 0))
                return;
        if (srv->max_lifetime > 0 && srv->max_lifetime / 10 < period)
                period = srv->max_lifetime / 10 < 0.01 ? 0.01 : srv->max_lifetime / 10;
        if (!srv->rand_seed)
                srv->rand_seed = (unsigned)srv->pid ^ (unsigned)(aiot__now_mono() * 1e6);
        if (ev_is_active(&srv->policy_w) && srv->policy_w.repeat == period)
                return;
        ev_timer_stop(srv->evl, &srv->policy_w);
        ev_timer_init(&srv->policy_w, policy_cb, period, period);
        srv->policy_w.data = srv;
        ev_timer_start(srv->evl, &srv->policy_w);
}

/* This incarnation's lifetime and request limit: each limit plus its share
 * of its jitter, so that workers started together are not all replaced at
 * once. */
void aiot__gen_draw_limits(struct proc *p)
{
        struct server *srv = p->srv;
        double u = (double)rand_r(&srv->rand_seed) / ((double)RAND_MAX + 1.0);

        p->lifetime = srv->max_lifetime + u * srv->lifetime_jitter;
        u = (double)rand_r(&srv->rand_seed) / ((double)RAND_MAX + 1.0);
        p->request_limit = srv->max_requests
                                   ? srv->max_requests + (uint64_t)(u * ((double)srv->requests_jitter + 1.0))
                                   : 0;
}

/* ---------------------------------------------------------------- a process became ready */

/* From aiot__proc_transition(), once p is READY: what that means for its
 * generation.  again: an earlier incarnation of p had been ready. */
void aiot__gen_proc_ready(struct proc *p, bool again)
{
        struct server *srv = p->srv;
        char status[96];

        aiot__gen_draw_limits(p);
        if (srv->state == SRV_STARTING) {
                if (aiot__gen_ready(srv, srv->gen))
                        server_all_ready(srv);
        } else if (srv->state == SRV_RUNNING) {
                if (p->replaces)
                        recycle_done(p);
                else if (srv->new_gen && p->gen == srv->new_gen) {
                        if (aiot__gen_ready(srv, srv->new_gen))
                                reload_done(srv);
                } else if (again)
                        aiot_log(AIOT_LOG_INFO, "%s %d (pid %d) is ready again", aiot__kind_name(p->kind),
                                 p->index, (int)p->pid);
                else {
                        aiot_log(AIOT_LOG_NOTICE, "%s %d (pid %d) is ready", aiot__kind_name(p->kind),
                                 p->index, (int)p->pid);
                        aiot__status_text(srv, status, sizeof(status));
                        aiot__notify(srv, AIOT__SD_STATUS, status);
                }
        }
        if (p->recycle_asked && p->state == PROC_READY && srv->state == SRV_RUNNING && !srv->new_gen)
                aiot__recycle_start(p);
}

/* ---------------------------------------------------------------- control signals */

/* "SIGTTIN received: adding ...", "ctl scale: adding ..." */
#define SIG_SUFFIX(cause) (strncmp(cause, "SIG", 3) == 0 ? " received" : "")

static void scale_up(struct server *srv, const char *cause)
{
        unsigned gen = srv->new_gen ? srv->new_gen : srv->gen;
        int index;
        size_t n = aiot__gen_workers(srv, gen, NULL, &index);
        struct proc *p;

        if (n >= MAX_WORKERS || index >= MAX_WORKERS) {
                aiot_log(AIOT_LOG_WARNING, "%s ignored: at most %d workers", cause, MAX_WORKERS);
                return;
        }
        p = aiot__proc_new(srv, AIOT_WORKER, index, gen, srv->worker_fn);
        if (!p) {
                aiot_log(AIOT_LOG_ERR, "%s: out of memory", cause);
                return;
        }
        srv->n_workers = n + 1;
        aiot_log(AIOT_LOG_NOTICE, "%s%s: adding worker %d (%zu workers)", cause, SIG_SUFFIX(cause), index,
                 srv->n_workers);
        aiot__proc_transition(p, PE_START, 0);
}

static void scale_down(struct server *srv, const char *cause)
{
        unsigned gen = srv->new_gen ? srv->new_gen : srv->gen;
        struct proc *p;
        size_t n = aiot__gen_workers(srv, gen, &p, NULL);
        char status[96];

        if (n <= 1 || !p) {
                aiot_log(AIOT_LOG_WARNING, "%s ignored: at least one worker must run", cause);
                return;
        }
        srv->n_workers = n - 1;
        aiot_log(AIOT_LOG_NOTICE, "%s%s: stopping worker %d (%zu workers)", cause, SIG_SUFFIX(cause), p->index,
                 srv->n_workers);
        if (p->replaced_by)
                aiot__proc_transition(p->replaced_by, PE_STOP, aiot__graceful_signal(srv));
        aiot__proc_transition(p, PE_STOP, aiot__graceful_signal(srv));
        aiot__status_text(srv, status, sizeof(status));
        aiot__notify(srv, AIOT__SD_STATUS, status);
}

static void forward_signal(struct server *srv, int signo)
{
        size_t n = 0;

        for (size_t i = 0; i < srv->n_procs; i++) {
                struct proc *p = srv->procs[i];

                /* Only READY: before that the process may not handle it yet. */
                if (p->state == PROC_READY && aiot_child_signal(p->child, signo) == 0)
                        n++;
        }
        aiot_log(AIOT_LOG_INFO, "SIG%s received: forwarded to %zu process%s", sigabbrev_np(signo) ?: "?", n,
                 n == 1 ? "" : "es");
}

void aiot__ctl_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        struct server *srv = w->data;

        aiot__proc_sweep(srv);
        if (srv->state == SRV_STOPPING || srv->state == SRV_DONE)
                return;
        switch (w->signum) {
        case SIGHUP:
                reload_start(srv);
                break;
        case SIGTTIN:
                scale_up(srv, "SIGTTIN");
                break;
        case SIGTTOU:
                scale_down(srv, "SIGTTOU");
                break;
        case SIGUSR2:
                (void)aiot__upgrade_start(srv, "SIGUSR2");
                break;
        case SIGWINCH:
                aiot_log(AIOT_LOG_INFO, "SIG%s received: it has no use here, ignored",
                         sigabbrev_np(w->signum) ?: "?");
                break;
        default:
                forward_signal(srv, w->signum);
                break;
        }
}

/* ---------------------------------------------------------------- the control socket */

/* `ctl reload`: 0 started (or queued behind the start or a reload under way),
 * -EBUSY when the server is stopping. */
int aiot__reload_request(struct server *srv)
{
        aiot__proc_sweep(srv);
        if (srv->state != SRV_STARTING && srv->state != SRV_RUNNING)
                return -EBUSY;
        reload_start(srv);
        return 0;
}

/* `ctl scale N`: workers of the newest generation are added or stopped one at
 * a time, as TTIN and TTOU do.  Returns 0, -EBUSY (not running), -ERANGE. */
int aiot__scale_to(struct server *srv, size_t n)
{
        unsigned gen;

        aiot__proc_sweep(srv);
        if (srv->state != SRV_RUNNING)
                return -EBUSY;
        if (n < 1 || n > MAX_WORKERS)
                return -ERANGE;
        gen = srv->new_gen ? srv->new_gen : srv->gen;
        while (srv->state == SRV_RUNNING && aiot__gen_workers(srv, gen, NULL, NULL) < n) {
                size_t before = aiot__gen_workers(srv, gen, NULL, NULL);

                scale_up(srv, "ctl scale");
                if (aiot__gen_workers(srv, gen, NULL, NULL) <= before)
                        return -EAGAIN;
        }
        while (srv->state == SRV_RUNNING && aiot__gen_workers(srv, gen, NULL, NULL) > n)
                scale_down(srv, "ctl scale");
        return 0;
}
