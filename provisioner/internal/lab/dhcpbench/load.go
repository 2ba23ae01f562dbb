package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// load is the built-in load generator: a DHCP relay agent that runs
// DISCOVER-OFFER-REQUEST-ACK exchanges at a fixed rate, each for a client
// drawn from the MAC list, the way perfdhcp -M does, and counts what went
// unanswered within dropAfter. It exists because perfdhcp saturates below
// the rates worth measuring on two shared cores; it builds packets from a
// template and parses replies by hand, so it costs a fraction of a server.
type load struct {
	relay  netip.Addr // the relay's own address: giaddr and source
	server netip.AddrPort
	macs   [][6]byte
	// dropAfter is when an unanswered message counts as dropped.
	dropAfter time.Duration
}

// loadResult is what one run measured.
type loadResult struct {
	Rate          float64       `json:"rate"`           // exchanges started per second
	Discovers     int64         `json:"discovers"`      // DISCOVERs sent
	Offers        int64         `json:"offers"`         // OFFERs received in time
	Requests      int64         `json:"requests"`       // REQUESTs sent
	Acks          int64         `json:"acks"`           // ACKs received in time
	Drops         int64         `json:"drops"`          // messages unanswered within dropAfter
	DropRatio     float64       `json:"drop_ratio"`     // drops / (discovers + requests)
	AvgOffer      time.Duration `json:"avg_offer_ns"`   // DISCOVER to OFFER
	AvgAck        time.Duration `json:"avg_ack_ns"`     // REQUEST to ACK
	MaxLatency    time.Duration `json:"max_latency_ns"` // worst of both
	Completed     int64         `json:"completed"`      // full exchanges
	CompletedRate float64       `json:"completed_rate"` // per second of the run
}

// pending is one message waiting for its answer.
type pending struct {
	sent    time.Time
	request bool // a REQUEST (else a DISCOVER)
	mac     int
}

// run starts rate exchanges per second for dur, then waits dropAfter for
// the last answers. conn is the relay socket (bound to relay:67).
func (l *load) run(ctx context.Context, conn *net.UDPConn, rate int, dur time.Duration) (loadResult, error) {
	var (
		mu       sync.Mutex
		inflight = map[uint32]pending{}
		res      loadResult
		offerSum time.Duration
		ackSum   time.Duration
		maxLat   time.Duration
		stopRecv atomic.Bool
	)
	send := func(b []byte) error {
		_, err := conn.WriteToUDPAddrPort(b, l.server)
		return err
	}
	// Receiver: match answers to pending messages by xid.
	recvDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 1500)
		req := make([]byte, 0, 400)
		for {
			conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, _, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					if stopRecv.Load() {
						recvDone <- nil
						return
					}
					continue
				}
				recvDone <- err
				return
			}
			now := time.Now()
			xid, mt, yiaddr, sid, ok := parseAnswer(buf[:n])
			if !ok {
				continue
			}
			mu.Lock()
			p, found := inflight[xid]
			if !found {
				mu.Unlock()
				continue
			}
			lat := now.Sub(p.sent)
			delete(inflight, xid)
			if lat > l.dropAfter {
				mu.Unlock()
				continue // counted as a drop by the sweeper
			}
			maxLat = max(maxLat, lat)
			switch {
			case !p.request && mt == 2: // OFFER
				res.Offers++
				offerSum += lat
				inflight[xid] = pending{sent: time.Now(), request: true, mac: p.mac}
				res.Requests++
				mu.Unlock()
				req = requestPacket(req[:0], xid, l.macs[p.mac], l.relay, yiaddr, sid)
				if err := send(req); err != nil {
					recvDone <- err
					return
				}
				continue
			case p.request && mt == 5: // ACK
				res.Acks++
				ackSum += lat
				res.Completed++
			}
			mu.Unlock()
		}
	}()

	// Sender: DISCOVERs paced by a 1 ms tick; the sweeper counts messages
	// unanswered for longer than dropAfter.
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	disc := make([]byte, 0, 400)
	sent := 0
	rnd := rand.New(rand.NewPCG(uint64(start.UnixNano()), 7))
	var sendErr error
	sweep := func(now time.Time) {
		mu.Lock()
		defer mu.Unlock()
		for xid, p := range inflight {
			if now.Sub(p.sent) > l.dropAfter {
				delete(inflight, xid)
				res.Drops++
			}
		}
	}
	lastSweep := start
loop:
	for {
		select {
		case <-ctx.Done():
			sendErr = ctx.Err()
			break loop
		case now := <-tick.C:
			elapsed := now.Sub(start)
			if elapsed >= dur {
				break loop
			}
			due := int(float64(rate) * elapsed.Seconds())
			for ; sent < due; sent++ {
				xid := rnd.Uint32()
				mac := rnd.IntN(len(l.macs))
				mu.Lock()
				inflight[xid] = pending{sent: time.Now(), mac: mac}
				res.Discovers++
				mu.Unlock()
				disc = discoverPacket(disc[:0], xid, l.macs[mac], l.relay)
				if err := send(disc); err != nil {
					sendErr = err
					break loop
				}
			}
			if now.Sub(lastSweep) > 100*time.Millisecond {
				sweep(now)
				lastSweep = now
			}
		}
	}
	ran := time.Since(start)
	// Let the last answers in, then count what is still missing.
	deadline := time.Now().Add(l.dropAfter + 200*time.Millisecond)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(inflight)
		mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	sweep(time.Now().Add(l.dropAfter + time.Second))
	stopRecv.Store(true)
	if err := <-recvDone; err != nil && sendErr == nil {
		sendErr = err
	}
	mu.Lock()
	defer mu.Unlock()
	res.Rate = float64(res.Discovers) / ran.Seconds()
	res.CompletedRate = float64(res.Completed) / ran.Seconds()
	if total := res.Discovers + res.Requests; total > 0 {
		res.DropRatio = float64(res.Drops) / float64(total)
	}
	if res.Offers > 0 {
		res.AvgOffer = offerSum / time.Duration(res.Offers)
	}
	if res.Acks > 0 {
		res.AvgAck = ackSum / time.Duration(res.Acks)
	}
	res.MaxLatency = maxLat
	return res, sendErr
}

// discoverPacket appends a relayed DHCPDISCOVER from mac to b.
func discoverPacket(b []byte, xid uint32, mac [6]byte, relay netip.Addr) []byte {
	b = header(b, xid, mac, relay)
	b = append(b, 53, 1, 1) // DISCOVER
	b = append(b, 55, 4, 1, 3, 6, 12)
	b = append(b, 255)
	return pad(b)
}

// requestPacket appends the relayed DHCPREQUEST for an offer to b.
func requestPacket(b []byte, xid uint32, mac [6]byte, relay, yiaddr, server netip.Addr) []byte {
	b = header(b, xid, mac, relay)
	b = append(b, 53, 1, 3) // REQUEST
	y, s := yiaddr.As4(), server.As4()
	b = append(b, 50, 4, y[0], y[1], y[2], y[3])
	b = append(b, 54, 4, s[0], s[1], s[2], s[3])
	b = append(b, 55, 4, 1, 3, 6, 12)
	b = append(b, 255)
	return pad(b)
}

// header appends a BOOTREQUEST header and the magic cookie.
func header(b []byte, xid uint32, mac [6]byte, relay netip.Addr) []byte {
	g := relay.As4()
	b = append(b, 1, 1, 6, 1) // op, htype, hlen, hops
	b = binary.BigEndian.AppendUint32(b, xid)
	b = append(b, 0, 0, 0, 0) // secs, flags
	b = append(b, make([]byte, 12)...)
	b = append(b, g[:]...)
	b = append(b, mac[:]...)
	b = append(b, make([]byte, 10+64+128)...)
	return append(b, 99, 130, 83, 99)
}

func pad(b []byte) []byte {
	for len(b) < 300 {
		b = append(b, 0)
	}
	return b
}

// parseAnswer reads a BOOTREPLY's xid, message type, yiaddr and server
// identifier.
func parseAnswer(b []byte) (xid uint32, mt byte, yiaddr, sid netip.Addr, ok bool) {
	if len(b) < 240 || b[0] != 2 {
		return 0, 0, netip.Addr{}, netip.Addr{}, false
	}
	xid = binary.BigEndian.Uint32(b[4:])
	yiaddr = netip.AddrFrom4([4]byte(b[16:20]))
	for i := 240; i+1 < len(b); {
		code := b[i]
		if code == 0 {
			i++
			continue
		}
		if code == 255 {
			break
		}
		n := int(b[i+1])
		if i+2+n > len(b) {
			break
		}
		v := b[i+2 : i+2+n]
		switch {
		case code == 53 && n == 1:
			mt = v[0]
		case code == 54 && n == 4:
			sid = netip.AddrFrom4([4]byte(v))
		}
		i += 2 + n
	}
	return xid, mt, yiaddr, sid, mt != 0
}

// listenRelay opens the relay socket on addr:67.
func listenRelay(addr netip.Addr) (*net.UDPConn, error) {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 67)))
	if err != nil {
		return nil, fmt.Errorf("listen as relay on %s:67: %w", addr, err)
	}
	_ = conn.SetReadBuffer(8 << 20)
	_ = conn.SetWriteBuffer(8 << 20)
	return conn, nil
}
