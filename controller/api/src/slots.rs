//! Connection slots, in all and per client address: what lets a server
//! refuse a flood from one client without refusing everyone else. The
//! proxy's listeners and the injector's webhook take one per connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections, bounded in all and, if set, per client address.
#[derive(Debug)]
pub struct Slots {
    max_total: usize,
    max_per_client: Option<usize>,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Which bound a refused connection met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Every slot is taken.
    Total,
    /// The client's share is taken.
    Client,
}

/// One connection's slot; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    client: IpAddr,
}

impl Slots {
    pub fn new(max_total: usize, max_per_client: Option<usize>) -> Arc<Self> {
        Arc::new(Slots {
            max_total,
            max_per_client,
            open: Mutex::default(),
        })
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn max_per_client(&self) -> Option<usize> {
        self.max_per_client
    }

    /// Takes a slot for a connection from `client`, or says which bound is
    /// reached.
    pub fn take(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Full> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err(Full::Total);
        }
        if let Some(max) = self.max_per_client {
            let from_client = open.by_client.entry(client).or_default();
            if *from_client >= max {
                return Err(Full::Client);
            }
            *from_client += 1;
        }
        open.total += 1;
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_slot() {
        let slots = Slots::new(3, Some(2));
        let greedy: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let first = slots.take(greedy).unwrap();
        let _second = slots.take(greedy).unwrap();
        assert_eq!(slots.take(greedy).unwrap_err(), Full::Client);
        let _third = slots.take(other).unwrap();
        assert_eq!(slots.take(other).unwrap_err(), Full::Total);
        drop(first);
        assert!(slots.take(greedy).is_ok());
    }

    #[test]
    fn slots_come_back_and_no_client_is_remembered() {
        let slots = Slots::new(2, None);
        let app: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..10 {
            let a = slots.take(app).unwrap();
            let b = slots.take(app).unwrap();
            assert_eq!(slots.take(app).unwrap_err(), Full::Total);
            drop((a, b));
        }
        assert_eq!(slots.open(), 0);
        let per_client = Slots::new(5, Some(1));
        drop(per_client.take(app).unwrap());
        assert!(per_client.open.lock().unwrap().by_client.is_empty());
    }
}
