/* SPDX-License-Identifier: MIT */
/* A shared object without an aiot_module symbol: aiotools-serve must refuse it. */
int nosym_something(void);
int nosym_something(void)
{
        return 42;
}
