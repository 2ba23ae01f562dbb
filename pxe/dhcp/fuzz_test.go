package dhcp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// fuzzSeeds are the packets under testdata/fuzz/FuzzServe, rewritten with
// -update: one of each kind of request the server meets.
func fuzzSeeds() map[string][]byte {
	seeds := map[string]*dhcpv4.DHCPv4{
		"bios-ipxe-discover": pkt(macNode1, dhcpv4.MessageTypeDiscover, ipxeROM()...),
		"uefi-discover":      pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
		"uefi-request": pkt(macNode1, dhcpv4.MessageTypeRequest, join(firmware(iana.EFI_BC),
			[]dhcpv4.Modifier{requestIP("10.77.0.11"), serverID("10.77.0.1")})...),
		"wrong-ip-request": pkt(macNode1, dhcpv4.MessageTypeRequest, requestIP("10.77.0.50")),
		"relayed-discover": pkt(macNode1, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), relayed())...),
		"inform":           pkt(macNode1, dhcpv4.MessageTypeInform, dhcpv4.WithClientIP(net.ParseIP("10.77.0.11"))),
		"release":          pkt(macNode1, dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(net.ParseIP("10.77.0.11"))),
		"unknown-discover": pkt(macNobody, dhcpv4.MessageTypeDiscover),
		"broken-discover":  pkt(macBroken, dhcpv4.MessageTypeDiscover),
		"long-url-ipxe":    pkt(macLong, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE"))),
	}
	out := make(map[string][]byte, len(seeds)+1)
	for name, p := range seeds {
		out[name] = p.ToBytes()
	}
	out["truncated"] = out["uefi-discover"][:250]
	return out
}

func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range map[string]map[string][]byte{"FuzzServe": fuzzSeeds(), "FuzzParseReply": rivalSeeds()} {
		dir := filepath.Join("testdata", "fuzz", target)
		for name, b := range seeds {
			path := filepath.Join(dir, name)
			want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if *update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != want {
				t.Errorf("fuzz seed %s is missing or stale (rewrite with -update): %v", path, err)
			}
		}
	}
}

// FuzzServe feeds arbitrary bytes through what Serve does with a packet:
// decode, then Handle, count, observe, encode and address the reply. It must
// never panic, and any reply must be a well-formed answer to the request.
func FuzzServe(f *testing.F) {
	f.Add([]byte{})
	s, _ := newTestServer()
	s.Metrics = NewMetrics(nil)
	var last Event
	s.Observer = func(ev Event) { last = ev }
	peer := netip.MustParseAddrPort("10.77.0.200:68")
	link := []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := s.decode(b, peer)
		if req == nil {
			return
		}
		// Every request is tried on both ports, in every mode.
		for _, mode := range []Mode{ModeReservation, ModeProxy, ModeOff} {
			for _, port := range []int{dhcpv4.ServerPort, PXEPort} {
				s.Mode = mode
				fuzzOne(t, s, &last, Request{Msg: req, Port: port, Peer: peer, LinkAddrs: link})
			}
		}
	})
}

// fuzzOne checks one request's reply for FuzzServe.
func fuzzOne(t *testing.T, s *Server, last *Event, r Request) {
	req := r.Msg
	*last = Event{}
	reply, _ := s.respond(t.Context(), r)
	if reply == nil {
		if last.Reply != "" {
			t.Fatalf("event says %q was sent but there is no reply", last.Reply)
		}
		return
	}
	if last.Reply == "" || last.Ignored != "" {
		t.Fatalf("reply sent but event = %+v", *last)
	}
	if s.Mode == ModeOff && r.Port != PXEPort {
		t.Fatalf("mode off answered on port 67: %+v", *last)
	}
	if last.Proxy && !isZero(reply.YourIPAddr) {
		t.Fatalf("proxy reply hands out %s", reply.YourIPAddr)
	}
	dst, _ := s.replyAddr(r, reply)
	if !dst.IsValid() || (dst.Port() != dhcpv4.ServerPort && dst.Port() != dhcpv4.ClientPort && int(dst.Port()) != s.relayPort && dst != r.Peer) {
		t.Fatalf("reply to %v", dst)
	}
	out := reply.ToBytes()
	{
		reply, err := dhcpv4.FromBytes(out)
		if err != nil {
			t.Fatalf("reply does not decode: %v", err)
		}
		if reply.OpCode != dhcpv4.OpcodeBootReply || reply.TransactionID != req.TransactionID ||
			!bytes.Equal(reply.ClientHWAddr, req.ClientHWAddr) {
			t.Fatalf("reply does not answer the request:\n%s", reply.Summary())
		}
		if n, limit := len(out), maxReplySize(req); n > limit {
			t.Fatalf("reply is %d bytes, client accepts %d", n, limit)
		}
		if !reply.ServerIdentifier().Equal(net.IP(serverIP.AsSlice())) {
			t.Fatalf("reply server id %v", reply.ServerIdentifier())
		}
		if mt := reply.MessageType(); mt != dhcpv4.MessageTypeOffer && mt != dhcpv4.MessageTypeAck && mt != dhcpv4.MessageTypeNak {
			t.Fatalf("reply type %s", mt)
		}
	}
}
