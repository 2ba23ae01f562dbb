package headapi

import (
	"math/rand/v2"
	"time"
)

// Defaults of the Backoff fields.
const (
	DefaultBackoffMin = time.Second
	DefaultBackoffMax = time.Minute
)

// Backoff computes waits between attempts: exponential with full jitter
// (each wait is uniform in [0, min(Max, Min·2^n)] after n failures), the
// scheme that spreads a crowd of clients best after a shared outage. The
// zero value uses the defaults; it is not safe for concurrent use.
type Backoff struct {
	// Min is the ceiling of the first wait. Zero means DefaultBackoffMin.
	Min time.Duration
	// Max caps the ceiling. Zero means DefaultBackoffMax.
	Max time.Duration
	// Rand returns a uniform integer in [0, n); nil means math/rand/v2.
	Rand func(n int64) int64

	n int
}

// Next returns the wait before the next attempt and counts a failure.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = DefaultBackoffMin
	}
	if hi <= 0 {
		hi = DefaultBackoffMax
	}
	ceil := lo
	for i := 0; i < b.n && ceil < hi; i++ {
		ceil *= 2
	}
	ceil = min(ceil, hi)
	b.n++
	r := b.Rand
	if r == nil {
		r = rand.Int64N
	}
	return time.Duration(r(int64(ceil) + 1))
}

// Failures returns the failures counted since the last Reset.
func (b *Backoff) Failures() int { return b.n }

// Reset starts over after a success.
func (b *Backoff) Reset() { b.n = 0 }
