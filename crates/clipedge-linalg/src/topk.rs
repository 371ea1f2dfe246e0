//! Bounded selection of the highest-scoring keys.

/// A score with the key it belongs to. Ordered by score (higher is better), then by key (lower wins ties),
/// so selections are deterministic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: f32,
    pub key: u64,
}

impl Scored {
    #[inline(always)]
    fn beats(&self, other: &Scored) -> bool {
        self.score > other.score || (self.score == other.score && self.key < other.key)
    }
}

/// Keeps the `k` best [`Scored`] items seen. A binary min-heap whose root is the worst
/// kept item, so rejecting a candidate costs one comparison against [`TopK::threshold`].
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    heap: Vec<Scored>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            // k may come from a request: reserve a bounded amount and let the heap grow.
            heap: Vec::with_capacity(k.min(4096)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.k
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Scores strictly below this can never enter; `-inf` until the heap is full.
    #[inline(always)]
    pub fn threshold(&self) -> f32 {
        if self.k == 0 {
            return f32::INFINITY;
        }
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap[0].score
        }
    }

    #[inline]
    pub fn push(&mut self, score: f32, key: u64) {
        if self.k == 0 || score.is_nan() {
            return;
        }
        let item = Scored { score, key };
        if self.heap.len() < self.k {
            self.heap.push(item);
            self.sift_up(self.heap.len() - 1);
            return;
        }
        if !item.beats(&self.heap[0]) {
            return;
        }
        self.heap[0] = item;
        self.sift_down(0);
    }

    pub fn extend(&mut self, items: impl IntoIterator<Item = Scored>) {
        for item in items {
            self.push(item.score, item.key);
        }
    }

    /// Best first.
    pub fn into_sorted(mut self) -> Vec<Scored> {
        self.heap.sort_by(|a, b| {
            if a.beats(b) {
                std::cmp::Ordering::Less
            } else if b.beats(a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        self.heap
    }

    fn sift_up(&mut self, mut index: usize) {
        while index > 0 {
            let parent = (index - 1) / 2;
            if self.heap[parent].beats(&self.heap[index]) {
                self.heap.swap(parent, index);
                index = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut index: usize) {
        let len = self.heap.len();
        loop {
            let left = 2 * index + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let worse_child = if right < len && self.heap[left].beats(&self.heap[right]) {
                right
            } else {
                left
            };
            if self.heap[index].beats(&self.heap[worse_child]) {
                self.heap.swap(index, worse_child);
                index = worse_child;
            } else {
                break;
            }
        }
    }
}
