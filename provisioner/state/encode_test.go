package state

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// TestEncodeMatchesJSON: the hand-written encoders write json.Marshal's
// bytes exactly, for records of every shape (empty and nil slices, every
// optional field set or not, strings that need escaping, times in other
// zones and with or without nanoseconds, a report), so stores written
// before them and after read the same and the writer's prepared records
// equal their decoded bytes.
func TestEncodeMatchesJSON(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "dhcp-offer", "firmware EFI x86-64: 10.0.1.2, boot snponly.efi", `quote " back \ slash`,
		"<html> & co", "tab\tnew\nline", "é ünïcode ✓", "\u2028 sep", "bad \xff utf8", "ctl \x01\x7f", "10.0.0.1:8080"}
	str := func() string { return strs[rnd.IntN(len(strs))] }
	zones := []*time.Location{time.UTC, time.FixedZone("x", 2*3600+30*60), time.FixedZone("y", -5*3600), time.Local}
	tm := func() time.Time {
		t := time.Unix(1_700_000_000+rnd.Int64N(1e8), 0).In(zones[rnd.IntN(len(zones))])
		if rnd.IntN(2) == 0 {
			t = t.Add(time.Duration(rnd.Int64N(1e9)))
		}
		if rnd.IntN(8) == 0 {
			t = t.Round(time.Millisecond * 100)
		}
		return t
	}
	boot := func() Boot {
		b := Boot{ID: rnd.IntN(1000), State: State(str())}
		if rnd.IntN(3) > 0 {
			b.Started = tm()
		}
		switch rnd.IntN(4) {
		case 0: // nil
		case 1:
			b.Timeline = []Event{}
		default:
			for range rnd.IntN(MaxEvents) {
				e := Event{Time: tm(), Step: Step(str())}
				if rnd.IntN(2) == 0 {
					e.Detail = str()
				}
				if rnd.IntN(3) == 0 {
					e.Head = str()
				}
				if rnd.IntN(2) == 0 {
					e.XID = rnd.Uint32()
				}
				b.Timeline = append(b.Timeline, e)
			}
		}
		if rnd.IntN(4) == 0 {
			b.Report = &Report{Received: tm(), State: "ready", Error: str(), ImageName: str(), Kernel: "6.1.0",
				Registration: Registration{Warnings: []string{str()}, Steps: []AgentStep{{Name: "root", UptimeSeconds: 1.5}}, CPUs: 2}}
		}
		return b
	}
	for i := range 3000 {
		s := statusRecord{Status: Status{Boot: boot(), Boots: rnd.IntN(1000)}}
		switch rnd.IntN(3) {
		case 0:
			s.Status.History = []int{}
		case 1:
			s.Status.History = []int{rnd.IntN(99), rnd.IntN(99)}
		}
		if rnd.IntN(2) == 0 {
			s.Status.Pin = &Pin{Ref: str(), Digest: "sha256:" + str(), Boot: rnd.IntN(3)}
		}
		if rnd.IntN(2) == 0 {
			s.BootNonce, s.TokenHash, s.TokenBoot = str(), str(), rnd.IntN(3)
		}
		want, werr := json.Marshal(s)
		got, gerr := encodeStatus(&s)
		if werr != nil || gerr != nil || !bytes.Equal(got, want) {
			t.Fatalf("record %d: encodeStatus gives (%v)\n%s\njson.Marshal (%v)\n%s", i, gerr, got, werr, want)
		}
		want, werr = json.Marshal(&s.Status.Boot)
		got, gerr = encodeBoot(&s.Status.Boot)
		if werr != nil || gerr != nil || !bytes.Equal(got, want) {
			t.Fatalf("boot %d: encodeBoot gives (%v)\n%s\njson.Marshal (%v)\n%s", i, gerr, got, werr, want)
		}
	}
	// A time RFC 3339 cannot say is refused by both.
	s := statusRecord{Status: Status{Boot: Boot{Timeline: []Event{{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}}}}}
	if _, err := json.Marshal(s); err == nil {
		t.Fatal("json.Marshal took year 10000")
	}
	if _, err := encodeStatus(&s); err == nil {
		t.Fatal("encodeStatus took year 10000")
	}
}

// BenchmarkEncodeStatus: a booted node's status record (a full boot's
// timeline), by hand and by encoding/json.
func BenchmarkEncodeStatus(b *testing.B) {
	s := statusRecord{Status: Status{Boot: Boot{ID: 7, Started: time.Now(), State: StateBooted}, Boots: 7, History: []int{6, 5, 4}},
		BootNonce: "0123456789abcdef", TokenHash: "0123456789abcdef0123456789abcdef", TokenBoot: 7}
	for range 12 {
		s.Status.Timeline = append(s.Status.Timeline, Event{Time: time.Now(), Step: StepDHCPOffer, Detail: "firmware EFI x86-64: 10.0.1.2, boot snponly.efi", XID: 0x12345678})
	}
	b.Run("hand", func(b *testing.B) {
		for b.Loop() {
			if _, err := encodeStatus(&s); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		for b.Loop() {
			if _, err := json.Marshal(s); err != nil {
				b.Fatal(err)
			}
		}
	})
}
