package dhcp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/pxe"
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
		"boot-server-4011": bootServerRequest(macNode1),
		"http-boot":        pkt(macNode1, dhcpv4.MessageTypeDiscover, httpBoot(iana.EFI_X86_64_HTTP)...),
		"infiniband":       pkt(nil, dhcpv4.MessageTypeDiscover, infiniBand(ibGUID)...),
		"relayed-subnet":   pkt(macRelayed, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), relayedVia("10.88.0.1"))...),
		"decline":          pkt(macNode1, dhcpv4.MessageTypeDecline, requestIP("10.77.0.11"), serverID("10.77.0.1")),
	}
	out := make(map[string][]byte, len(seeds)+1)
	for name, p := range seeds {
		out[name] = p.ToBytes()
	}
	out["truncated"] = out["uefi-discover"][:250]
	// And what real firmware sent, from the captures.
	files, _ := filepath.Glob(filepath.Join("testdata", "capture", "*.pcap"))
	for _, file := range files {
		pkts, err := readPcap(file)
		if err != nil {
			continue
		}
		for i, p := range pkts {
			if p.dst.Port() == dhcpv4.ServerPort || p.dst.Port() == PXEPort {
				out[fmt.Sprintf("captured-%s-%d", strings.TrimSuffix(filepath.Base(file), ".pcap"), i)] = p.payload
			}
		}
	}
	return out
}

func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range map[string]map[string][]byte{"FuzzServe": fuzzSeeds(), "FuzzParseReply": rivalSeeds(), "FuzzChoose": chooseSeeds()} {
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
	s.HTTPBootURL = "http://:8080/nbp/"
	s.Subnets = twoSubnets
	d, err := OpenDiscovery("")
	if err != nil {
		f.Fatal(err)
	}
	s.Discovery = d
	s.Subnets[0].Discovery = Range{netip.MustParseAddr("10.77.0.200"), netip.MustParseAddr("10.77.0.220")}
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
	if enc := appendMessage(nil, reply); !bytes.Equal(enc, out) || messageSize(reply) != len(out) {
		t.Fatalf("appendMessage (%d bytes, size %d) differs from ToBytes (%d bytes):\n% x\n% x", len(enc), messageSize(reply), len(out), enc, out)
	}
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

// chooseSeeds are the option bytes FuzzChoose starts from: what firmware,
// HTTP boot, iPXE and an OS send (type, port flag, arch, 60, 77, 175).
func chooseSeeds() map[string][]byte {
	enc := func(mt dhcpv4.MessageType, port4011 bool, arch uint16, hasArch bool, vc, uc string, eb bool, override string) []byte {
		b := []byte{byte(mt), 0, byte(arch >> 8), byte(arch), 0, 0}
		if port4011 {
			b[1] = 1
		}
		if hasArch {
			b[4] = 1
		}
		if eb {
			b[5] = 1
		}
		b = append(b, byte(len(vc)))
		b = append(b, vc...)
		b = append(b, byte(len(uc)))
		b = append(b, uc...)
		return append(b, override...)
	}
	return map[string][]byte{
		"bios-firmware": enc(dhcpv4.MessageTypeDiscover, false, 0, true, "PXEClient:Arch:00000:UNDI:002001", "", false, ""),
		"uefi-4011":     enc(dhcpv4.MessageTypeRequest, true, 7, true, "PXEClient:Arch:00007:UNDI:003016", "", false, ""),
		"http-boot":     enc(dhcpv4.MessageTypeDiscover, false, 16, true, "HTTPClient:Arch:00016:UNDI:003001", "", false, ""),
		"ipxe":          enc(dhcpv4.MessageTypeRequest, false, 7, true, "PXEClient:Arch:00007:UNDI:003010", "iPXE", true, ""),
		"os":            enc(dhcpv4.MessageTypeDiscover, false, 0, false, "", "", false, ""),
		"override":      enc(dhcpv4.MessageTypeDiscover, false, 9, true, "PXEClient", "", false, "ipxe.efi"),
		"release":       enc(dhcpv4.MessageTypeRelease, false, 0, false, "", "", false, ""),
	}
}

// FuzzChoose checks the boot-file decision's rules on arbitrary inputs:
// only iPXE gets a script, an OS never gets a file, a firmware or HTTP
// boot client gets the override or its architecture's file or nothing at
// all, port 4011 never answers a DISCOVER or an OS, and an ignored
// request carries no file.
func FuzzChoose(f *testing.F) {
	table := DefaultBootTable()
	table[pxe.ArchEFIARM64] = "arm64/snponly.efi"
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 7 {
			return
		}
		r := BootRequest{Type: dhcpv4.MessageType(b[0]), Port: dhcpv4.ServerPort,
			Arch: pxe.Arch(uint16(b[2])<<8 | uint16(b[3])), HasArch: b[4]&1 == 1, Etherboot: b[5]&1 == 1}
		if b[1]&1 == 1 {
			r.Port = PXEPort
		}
		rest := b[6:]
		take := func() string {
			if len(rest) == 0 {
				return ""
			}
			n := min(int(rest[0]), len(rest)-1)
			v := string(rest[1 : 1+n])
			rest = rest[1+n:]
			return v
		}
		r.VendorClass = take()
		if uc := take(); uc != "" {
			r.UserClass = strings.Split(uc, ",")
		}
		r.Override = string(rest)
		got := table.Choose(r)
		if again := table.Choose(r); again != got {
			t.Fatalf("Choose is not a function of its input: %+v then %+v", got, again)
		}
		if got.Ignore != "" {
			if got.File != "" || got.Script || got.reason == "" {
				t.Fatalf("ignored request with a boot: %+v", got)
			}
			return
		}
		switch got.Stage {
		case StageIPXE:
			if !got.Script || got.File != "" {
				t.Fatalf("iPXE: %+v", got)
			}
		case StageOS:
			if got.File != "" || got.Script || r.Port == PXEPort {
				t.Fatalf("OS: %+v for %+v", got, r)
			}
		case StageFirmware, StageHTTPBoot:
			if got.Script || got.File == "" || (r.Override != "" && got.File != r.Override) ||
				(r.Override == "" && got.File != table[r.Arch]) {
				t.Fatalf("%s: %+v for %+v", got.Stage, got, r)
			}
		default:
			t.Fatalf("unknown stage %q", got.Stage)
		}
		if r.Port == PXEPort && r.Type == dhcpv4.MessageTypeDiscover {
			t.Fatalf("DISCOVER answered on port 4011: %+v", got)
		}
		switch r.Type {
		case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
		default:
			t.Fatalf("%s answered: %+v", r.Type, got)
		}
	})
}
