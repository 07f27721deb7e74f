/* SPDX-License-Identifier: GPL-2.0 */
/* The C headers the module-local bindgen run reads. */
#include <linux/balloon.h>
#include <linux/mm.h>
#include <linux/mod_devicetable.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <uapi/linux/virtio_balloon.h>
#include <uapi/linux/virtio_ids.h>

#include "helpers.h"
