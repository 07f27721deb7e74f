// SPDX-License-Identifier: GPL-2.0
/*
 * One-line wrappers around static inline functions and macros; see helpers.h.
 */
#include <linux/balloon.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/pci.h>
#include <linux/platform_device.h>
#include <linux/pm_wakeup.h>
#include <linux/scatterlist.h>
#include <linux/vmstat.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>

#include "helpers.h"

u64 vbrs_virtio_features(const struct virtio_device *vdev)
{
	return vdev->features;
}

void vbrs_virtio_clear_feature(struct virtio_device *vdev, unsigned int fbit)
{
	__virtio_clear_bit(vdev, fbit);
}

int vbrs_virtio_find_vqs(struct virtio_device *vdev, unsigned int nvqs,
			 struct virtqueue *vqs[], struct virtqueue_info vqs_info[])
{
	return virtio_find_vqs(vdev, nvqs, vqs, vqs_info, NULL);
}

void vbrs_virtio_del_vqs(struct virtio_device *vdev)
{
	vdev->config->del_vqs(vdev);
}

void vbrs_virtio_device_ready(struct virtio_device *vdev)
{
	virtio_device_ready(vdev);
}

void vbrs_virtio_cread(struct virtio_device *vdev, unsigned int offset, void *buf, unsigned int len)
{
	/* As virtio_cread() does: one access up to 32 bits, else a
	 * generation-checked read. */
	if (len <= 4)
		vdev->config->get(vdev, offset, buf, len);
	else
		__virtio_cread_many(vdev, offset, buf, 1, len);
}

void vbrs_virtio_cwrite(struct virtio_device *vdev, unsigned int offset, const void *buf,
			unsigned int len)
{
	vdev->config->set(vdev, offset, buf, len);
}

int vbrs_virtqueue_add_outbuf(struct virtqueue *vq, void *buf, unsigned int len, void *token)
{
	struct scatterlist sg;

	sg_init_one(&sg, buf, len);
	return virtqueue_add_outbuf(vq, &sg, 1, token, GFP_KERNEL);
}

int vbrs_virtqueue_add_inbuf_nowait(struct virtqueue *vq, struct scatterlist *sg,
				    unsigned int nents, void *token)
{
	return virtqueue_add_inbuf(vq, sg, nents, token, GFP_NOWAIT);
}

void *vbrs_wait_for_buf(struct wait_queue_head *wq, struct virtqueue *vq, long timeout)
{
	unsigned int len;
	void *token = NULL;

	wait_event_timeout(*wq, (token = virtqueue_get_buf(vq, &len)), timeout);
	return token;
}

bool vbrs_virt_addr_valid(const void *addr)
{
	return virt_addr_valid(addr);
}

void vbrs_page_list_add(struct page *page, struct list_head *list)
{
	list_add(&page->lru, list);
}

struct page *vbrs_page_list_pop(struct list_head *list)
{
	struct page *page = list_first_entry_or_null(list, struct page, lru);

	if (page)
		list_del(&page->lru);
	return page;
}

struct page *vbrs_page_list_next(struct list_head *list, struct page *page)
{
	struct list_head *next = page ? page->lru.next : list->next;

	return next == list ? NULL : list_entry(next, struct page, lru);
}

unsigned long vbrs_page_to_pfn(struct page *page)
{
	return page_to_pfn(page);
}

unsigned long vbrs_alloc_pages_bulk(gfp_t gfp, int nr_pages, struct page **pages)
{
	return alloc_pages_bulk(gfp, nr_pages, pages);
}

void vbrs_release_pages(struct page **pages, int nr)
{
	release_pages(pages, nr);
}

unsigned int vbrs_pageblock_order(void)
{
	return pageblock_order;
}

void vbrs_put_page(struct page *page)
{
	put_page(page);
}

void vbrs_free_pages(struct page *page, unsigned int order)
{
	unsigned long pfn = page_to_pfn(page), i;

	/* A ballooned block's pages are offline until they are freed. */
	for (i = 0; i < (1UL << order); i++) {
		struct page *p = pfn_to_page(pfn + i);

		if (PageOffline(p))
			__ClearPageOffline(p);
	}
	__free_pages(page, order);
}

void vbrs_set_block_offline(struct page *page, unsigned int order)
{
	unsigned long pfn = page_to_pfn(page), i;

	/* A block put back after a failed deflate is offline already. */
	for (i = 0; i < (1UL << order); i++) {
		struct page *p = pfn_to_page(pfn + i);

		if (!PageOffline(p))
			__SetPageOffline(p);
	}
}

/*
 * Free pages in CMA pageblocks. Whether a page is in one
 * (is_migrate_cma_page()) cannot be asked from a module: the
 * pageblock's migrate type is read by get_pfnblock_migratetype(), which
 * is not exported (Debian's kernels have CONFIG_CMA). The counter is.
 */
unsigned long vbrs_free_cma_pages(void)
{
	return global_zone_page_state(NR_FREE_CMA_PAGES);
}

int vbrs_virtqueue_add_inbuf_block(struct virtqueue *vq, struct page *page, unsigned int order,
				   void *token)
{
	struct scatterlist sg;
	void *addr;

	/* sg_init_one() needs the linear map (BUG_ON otherwise). */
	if (PageHighMem(page))
		return -EINVAL;
	addr = page_address(page);
	sg_init_one(&sg, addr, PAGE_SIZE << order);
	return virtqueue_add_inbuf(vq, &sg, 1, token, GFP_KERNEL);
}

void vbrs_balloon_devinfo_init(struct balloon_dev_info *info)
{
	balloon_devinfo_init(info);
}

unsigned long vbrs_totalram_pages(void)
{
	return totalram_pages();
}

unsigned long vbrs_global_node_page_state(int item)
{
	return global_node_page_state(item);
}

bool vbrs_want_init_on_free(void)
{
	return want_init_on_free();
}

bool vbrs_page_poisoning_enabled(void)
{
	return page_poisoning_enabled_static();
}

bool vbrs_balloon_is_empty(struct balloon_dev_info *info)
{
	return READ_ONCE(info->isolated_pages) == 0 && list_empty_careful(&info->pages);
}

void vbrs_get_page(struct page *page)
{
	get_page(page);
}

void vbrs_virtio_set_wakeup_capable(struct virtio_device *vdev)
{
	device_set_wakeup_capable(&vdev->dev, true);
}

void vbrs_virtio_stay_awake(struct virtio_device *vdev)
{
	pm_stay_awake(&vdev->dev);
}

void vbrs_virtio_relax(struct virtio_device *vdev)
{
	pm_relax(&vdev->dev);
}

struct pglist_data *vbrs_page_pgdat(const struct page *page)
{
	return page_pgdat(page);
}

void vbrs_count_vm_events(int item, long delta)
{
	count_vm_events(item, delta);
}
