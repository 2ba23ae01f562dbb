// Package ratelog keeps a line that a flood repeats from flooding the log:
// per key, at most one line per interval, and the next line written says
// how many were held back.
//
//	lim := ratelog.Limiter{Interval: 10 * time.Second}
//	if ok, held := lim.Allow("busy"); ok {
//		log.Warn("tftp request refused: server busy", "suppressed", held)
//	} else {
//		log.Debug("tftp request refused: server busy")
//	}
package ratelog

import (
	"sync"
	"time"
)

// DefaultInterval is the interval of a Limiter whose Interval is zero.
const DefaultInterval = 10 * time.Second

// maxKeys bounds the entries a Limiter keeps, so that keys taken from
// packets (a server address) cannot grow it without bound. Once it is
// full, new keys share one overflow entry.
const maxKeys = 256

// overflowKey is the entry keys share once maxKeys are remembered.
const overflowKey = "\x00overflow"

// Limiter decides which repeated log lines to write. The zero value allows
// one line per key every DefaultInterval; it is safe for concurrent use.
type Limiter struct {
	// Interval is the shortest time between two lines of one key.
	// Default 10s (DefaultInterval).
	Interval time.Duration

	mu      sync.Mutex
	entries map[string]*entry
	now     func() time.Time // tests
}

type entry struct {
	last time.Time // when a line was last allowed
	held int       // lines held back since
}

// Allow reports whether a line for key may be written now and, if so, how
// many lines for key were held back since the last one written.
func (l *Limiter) Allow(key string) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.now != nil {
		now = l.now()
	}
	every := l.Interval
	if every <= 0 {
		every = DefaultInterval
	}
	if l.entries == nil {
		l.entries = map[string]*entry{}
	}
	e, found := l.entries[key]
	if !found {
		if len(l.entries) >= maxKeys-1 { // one is kept for the overflow
			l.forget(now, every)
		}
		if len(l.entries) >= maxKeys-1 {
			key = overflowKey
			e = l.entries[key]
		}
		if e == nil {
			e = &entry{}
			l.entries[key] = e
		}
	}
	if !e.last.IsZero() && now.Sub(e.last) < every {
		e.held++
		return false, 0
	}
	held = e.held
	e.last, e.held = now, 0
	return true, held
}

// forget drops the entries with nothing held back whose interval has
// passed: their next line would be allowed anyway.
func (l *Limiter) forget(now time.Time, every time.Duration) {
	for k, e := range l.entries {
		if e.held == 0 && now.Sub(e.last) >= every {
			delete(l.entries, k)
		}
	}
}
