package ratelog

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &Limiter{Interval: 10 * time.Second, now: func() time.Time { return now }}
	step := func(key string, wantOK bool, wantHeld int) {
		t.Helper()
		ok, held := l.Allow(key)
		if ok != wantOK || held != wantHeld {
			t.Errorf("at %v Allow(%q) = %v, %d; want %v, %d", now.Sub(time.Unix(1000, 0)), key, ok, held, wantOK, wantHeld)
		}
	}
	step("a", true, 0) // the first line of a key is written at once
	for range 5 {
		step("a", false, 0)
	}
	step("b", true, 0) // keys are independent
	now = now.Add(9 * time.Second)
	step("a", false, 0)
	now = now.Add(time.Second)
	step("a", true, 6) // the interval has passed: six were held back
	step("a", false, 0)
	now = now.Add(time.Minute)
	step("a", true, 1)
	step("b", true, 0)
}

// TestLimiterBoundedKeys floods the limiter with distinct keys, as spoofed
// server addresses would, and checks that it remembers at most maxKeys and
// still limits the overflow.
func TestLimiterBoundedKeys(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &Limiter{now: func() time.Time { return now }}
	allowed := 0
	for i := range 10 * maxKeys {
		if ok, _ := l.Allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256)); ok {
			allowed++
		}
	}
	if len(l.entries) > maxKeys {
		t.Errorf("limiter remembers %d keys, want at most %d", len(l.entries), maxKeys)
	}
	if allowed != maxKeys {
		t.Errorf("%d lines allowed for %d distinct keys in one interval, want %d (one per remembered key, one for the rest)", allowed, 10*maxKeys, maxKeys)
	}
	now = now.Add(DefaultInterval)
	if ok, _ := l.Allow("new"); !ok {
		t.Error("a new key after the interval is not allowed")
	}
}
