package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// capturedPacket is one UDP datagram from a pcap file.
type capturedPacket struct {
	src, dst netip.AddrPort
	payload  []byte
}

// readPcap returns the IPv4 UDP datagrams of a pcap file (Ethernet link
// type, either byte order).
func readPcap(path string) ([]capturedPacket, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 {
		return nil, errors.New("short pcap header")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("not a pcap file: magic %x", b[:4])
	}
	if lt := bo.Uint32(b[20:]); lt != 1 {
		return nil, fmt.Errorf("link type %d, want Ethernet (1)", lt)
	}
	var out []capturedPacket
	for rest := b[24:]; len(rest) >= 16; {
		n := int(bo.Uint32(rest[8:]))
		if len(rest) < 16+n {
			return nil, errors.New("truncated pcap record")
		}
		f := rest[16 : 16+n]
		rest = rest[16+n:]
		if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[14+9] != 17 {
			continue
		}
		ihl := int(f[14]&0x0f) * 4
		ip, udp := f[14:], f[14+ihl:]
		out = append(out, capturedPacket{
			src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(udp[0:])),
			dst:     netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(udp[2:])),
			payload: udp[8:],
		})
	}
	return out, nil
}

// captureNodes are the nodes of provisioner/internal/lab/capture, as the
// capture's `ramboot serve` reserved them.
var captureNodes = map[string]Reservation{
	"52:54:00:77:c0:0a": {IP: netip.MustParseAddr("10.77.0.20"), PrefixLen: 24, Hostname: "cap-bios",
		ScriptURL: "http://10.77.0.1/boot/ipxe?mac=52%3A54%3A00%3A77%3Ac0%3A0a"},
	"52:54:00:77:c0:0b": {IP: netip.MustParseAddr("10.77.0.21"), PrefixLen: 24, Hostname: "cap-uefi",
		ScriptURL: "http://10.77.0.1/boot/ipxe?mac=52%3A54%3A00%3A77%3Ac0%3A0b"},
}

// TestCapturedBoots replays the DHCP requests that real firmware sent in
// QEMU boots (testdata/capture/*.pcap, recorded by
// provisioner/internal/lab/capture): SeaBIOS's iPXE ROM, OVMF's PXE client
// and the iPXE it chained. Each request goes through Handle as from the
// head's link, and the replies must match testdata/capture/NAME.golden
// exactly (rewritten with -update). It also checks that the live server
// of the capture answered each request the same way (type, address, boot
// file, destination).
func TestCapturedBoots(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "capture", "*.pcap"))
	if len(files) == 0 {
		t.Fatal("no captures in testdata/capture")
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".pcap")
		t.Run(name, func(t *testing.T) {
			pkts, err := readPcap(file)
			if err != nil {
				t.Fatal(err)
			}
			s := &Server{
				Inventory: InventoryFunc(func(_ context.Context, c Client) (Reservation, error) {
					if r, ok := captureNodes[c.MAC.String()]; ok {
						return r, nil
					}
					return Reservation{}, ErrUnknown
				}),
				Subnets: []Subnet{{Prefix: netip.MustParsePrefix("10.77.0.0/24")}},
			}
			var golden bytes.Buffer
			requests := 0
			for i, p := range pkts {
				if p.dst.Port() != dhcpv4.ServerPort && p.dst.Port() != PXEPort {
					continue
				}
				requests++
				req, err := dhcpv4.FromBytes(p.payload)
				if err != nil {
					t.Fatalf("packet %d does not decode: %v", i, err)
				}
				r := Request{Msg: req, Port: int(p.dst.Port()), Peer: p.src, Dst: p.dst.Addr(), LinkAddrs: link77}
				reply, ev, err := s.Handle(t.Context(), r)
				if err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
				fmt.Fprintf(&golden, "### request %d from %s to %s: %s, stage %s, arch %s, vendor class %q, user class %q, flags %#04x\n",
					i, p.src, p.dst, ev.Request, ev.Stage, ev.Arch, ev.VendorClass, req.UserClass(), req.Flags)
				if reply == nil {
					fmt.Fprintf(&golden, "ignored: %s\n\n", ev.Ignored)
					continue
				}
				checkCommon(t, req, reply, ev, "10.77.0.1")
				golden.WriteString(goldenText(s, r, reply) + "\n")
				checkLive(t, pkts[i+1:], req, reply, s, r)
			}
			if requests == 0 {
				t.Fatal("no DHCP requests in the capture")
			}
			checkGolden(t, filepath.Join("capture", name+".golden"), golden.String())
		})
	}
}

// checkLive compares reply with the capture's own answer to req: the first
// later reply with req's transaction id.
func checkLive(t *testing.T, later []capturedPacket, req, reply *dhcpv4.DHCPv4, s *Server, r Request) {
	t.Helper()
	for _, p := range later {
		if p.src.Port() != dhcpv4.ServerPort && p.src.Port() != PXEPort {
			continue
		}
		live, err := dhcpv4.FromBytes(p.payload)
		if err != nil || live.TransactionID != req.TransactionID {
			continue
		}
		dst, _ := s.replyAddr(r, reply)
		if live.MessageType() != reply.MessageType() || !live.YourIPAddr.Equal(reply.YourIPAddr) ||
			live.BootFileNameOption() != reply.BootFileNameOption() || p.dst.Addr() != dst.Addr() {
			t.Errorf("xid %s: the live server sent %s of %s (%q) to %s; Handle says %s of %s (%q) to %s",
				req.TransactionID, live.MessageType(), live.YourIPAddr, live.BootFileNameOption(), p.dst,
				reply.MessageType(), reply.YourIPAddr, reply.BootFileNameOption(), dst)
		}
		return
	}
	t.Errorf("xid %s: the capture has no answer", req.TransactionID)
}
