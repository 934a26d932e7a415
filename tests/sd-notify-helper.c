/* SPDX-License-Identifier: MIT */
/* Sends the supervisor's notify sequence with the public sd API, for
 * check-sd-notify.sh to record under the real notify-listener.  Prints one line
 * first, so that the script knows the sender pid and what to expect. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <aiotools/sd.h>

int main(void)
{
        uint64_t usec = 0;
        int r, sent = 0;

        r = aiot_sd_watchdog_usec(&usec);
        if (r < 0) {
                fprintf(stderr, "sd-notify-helper: aiot_sd_watchdog_usec: %d\n", r);
                return 1;
        }
        /* Whether the library under test was built with libsystemd decides
         * what the script expects; the calls' results must not decide it. */
#ifdef HAVE_SYSTEMD
        printf("helper build=systemd\n");
#else
        printf("helper build=nosystemd\n");
#endif
        printf("helper pid=%ld watchdog_usec=%" PRIu64 "\n", (long)getpid(), r > 0 ? usec : 0);
        fflush(stdout);

        /* The order the supervisor follows: ready, pings, a reload, a stop.
         * (One call per statement: the elements of an initializer list are
         * evaluated in no fixed order.) */
        int results[6], n = 0;
        results[n++] = aiot_sd_notify_ready("sd-notify-helper ready");
        results[n++] = aiot_sd_notify_watchdog();
        results[n++] = aiot_sd_notify_reloading("reloading");
        results[n++] = aiot_sd_notify_ready("reloaded");
        results[n++] = aiot_sd_notifyf("STATUS=custom %d", 42);
        results[n++] = aiot_sd_notify_stopping(NULL);
        for (int i = 0; i < n; i++) {
                if (results[i] < 0) {
                        fprintf(stderr, "sd-notify-helper: message %d: error %d\n", i, results[i]);
                        return 1;
                }
                sent += results[i] > 0;
        }
        printf("helper sent=%d\n", sent);
        return 0;
}
