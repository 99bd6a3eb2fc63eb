//! [`FeedHub`]: the key feed's head in memory. Writers call [`FeedHub::notify`] after
//! committing a change; gateways long-polling the feed wait on [`FeedHub::subscribe`] and wake
//! at once.

use tokio::sync::watch;

#[derive(Clone)]
pub struct FeedHub {
    head: watch::Sender<u64>,
}

impl FeedHub {
    pub fn new(head: u64) -> FeedHub {
        FeedHub {
            head: watch::channel(head).0,
        }
    }

    /// Records that the database head is at least `head` and wakes waiting readers.
    pub fn notify(&self, head: u64) {
        self.head.send_if_modified(|h| {
            if head > *h {
                *h = head;
                true
            } else {
                false
            }
        });
    }

    /// Wakes every waiting reader without a new head (the feed epoch changed).
    pub fn wake(&self) {
        self.head.send_modify(|_| {});
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}
