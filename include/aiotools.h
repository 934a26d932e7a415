/* SPDX-License-Identifier: MIT */
/* libaiotools-server: the umbrella header. */
#ifndef AIOTOOLS_H
#define AIOTOOLS_H

#include <aiotools/log.h>
#include <aiotools/fork.h>
#include <aiotools/task.h>
#include <aiotools/scope.h>
#include <aiotools/io.h>
#include <aiotools/blocking.h>
#include <aiotools/timer.h>
#include <aiotools/sd.h>
#include <aiotools/listen.h>
#include <aiotools/server.h>
#include <aiotools/conn.h>
#include <aiotools/module.h>

#endif
