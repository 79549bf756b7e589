//! Dense id spaces (service ids, backend-set ids, backend ids): the kernel indexes arrays
//! with them, so they are small integers handed out and taken back here.

/// Ids in `1..max`; 0 is never handed out.
#[derive(Debug)]
pub struct IdPool {
    what: &'static str,
    next: u32,
    max: u32,
    free: Vec<u32>,
}

impl IdPool {
    /// A pool where `used` are already taken (read back from the pinned maps).
    pub fn with_used(what: &'static str, max: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let mut used: Vec<u32> = used.into_iter().filter(|&id| id != 0 && id < max).collect();
        used.sort_unstable();
        used.dedup();
        let next = used.last().map_or(1, |&last| last + 1);
        let mut free = Vec::new();
        let mut want = 1;
        for &id in &used {
            free.extend(want..id);
            want = id + 1;
        }
        // Lowest ids first: `alloc` pops from the end.
        free.reverse();
        Self { what, next, max, free }
    }

    /// An id for which `usable` holds; ids that fail it stay free for later.
    pub fn alloc_where(&mut self, mut usable: impl FnMut(u32) -> bool) -> Option<u32> {
        if let Some(pos) = self.free.iter().rposition(|&id| usable(id)) {
            return Some(self.free.remove(pos));
        }
        while self.next < self.max {
            let id = self.next;
            self.next += 1;
            if usable(id) {
                return Some(id);
            }
            self.free.insert(0, id);
        }
        None
    }

    pub fn alloc(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        (self.next < self.max).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub fn release(&mut self, id: u32) {
        if id != 0 && id < self.next && !self.free.contains(&id) {
            self.free.push(id);
        }
    }

    pub fn what(&self) -> &'static str {
        self.what
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_gaps_before_growing() {
        let mut p = IdPool::with_used("t", 10, [2, 5]);
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), Some(3));
        assert_eq!(p.alloc(), Some(4));
        assert_eq!(p.alloc(), Some(6));
        p.release(3);
        assert_eq!(p.alloc(), Some(3));
    }

    #[test]
    fn runs_out_and_says_so() {
        let mut p = IdPool::with_used("t", 3, []);
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), Some(2));
        assert_eq!(p.alloc(), None);
    }

    #[test]
    fn alloc_where_skips_ids_still_in_use() {
        let mut p = IdPool::with_used("t", 10, []);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        p.release(a);
        p.release(b);
        let got = p.alloc_where(|id| id != a).unwrap();
        assert_eq!(got, b);
        assert_eq!(p.alloc(), Some(a));
    }
}
