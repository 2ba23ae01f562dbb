package provisioner

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// cluster10k opens a database holding 10,000 nodes in a two-level profile
// chain, two interfaces each, and returns the seam over it.
func cluster10k(b *testing.B) (*Nodes, []net.HardwareAddr) {
	b.Helper()
	defaults := &plan.Defaults{Image: "default", KernelArgs: "console=ttyS0", Modules: []string{"virtio_net"}, Subnets: []plan.Subnet{
		{Prefix: netip.MustParsePrefix("10.0.0.1/16"), Gateway: netip.MustParseAddr("10.0.255.254")},
		{Prefix: netip.MustParsePrefix("10.8.0.0/16"), MTU: 2044},
	}}
	heads := NewNodes(nil, defaults, "http://10.0.0.1")
	db, err := state.OpenWith(filepath.Join(b.TempDir(), "s.db"), state.Options{Check: heads.Check})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	heads.db = db
	var macs []net.HardwareAddr
	ka := "console=ttyS0,115200 quiet"
	_, err = db.ChangeInventory(false, func(inv *inventory.Inventory) error {
		inv.Profiles["base"] = &inventory.Profile{Name: "base", Settings: inventory.Settings{KernelArgs: &ka, Tags: map[string]string{"site": "a"}}}
		inv.Profiles["compute"] = &inventory.Profile{Name: "compute", Inherits: []string{"base"}, Settings: inventory.Settings{Image: "rocky9", Modules: []string{"mlx5_core"}}}
		for i := range 10000 {
			mac := net.HardwareAddr{0x52, 0x54, 0, byte(i >> 16), byte(i >> 8), byte(i)}
			macs = append(macs, mac)
			name := fmt.Sprintf("n%05d", i)
			inv.Nodes[name] = &inventory.Node{Name: name, Profiles: []string{"compute"}, Interfaces: []inventory.Interface{
				{Name: "eth0", MAC: mac.String(), IP: netip.AddrFrom4([4]byte{10, 0, byte(i/250 + 1), byte(i%250 + 1)})},
				{Name: "ib0", IP: netip.AddrFrom4([4]byte{10, 8, byte(i / 250), byte(i%250 + 1)})},
			}}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return heads, macs
}

// BenchmarkLookup is the head's share of one DHCP packet with 10,000
// nodes: the lookup by MAC and the node's plan (profile chain, subnet).
func BenchmarkLookup(b *testing.B) {
	heads, macs := cluster10k(b)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		if _, err := heads.Lookup(ctx, dhcp.Client{MAC: macs[i%len(macs)]}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkHandleDiscover is one firmware DISCOVER through the DHCP
// server's decision with the head's reservations (10,000 nodes), encoding
// the reply: everything of a packet but the socket.
func BenchmarkHandleDiscover(b *testing.B) {
	heads, macs := cluster10k(b)
	srv := &dhcp.Server{ServerIP: netip.MustParseAddr("10.0.0.1"), Inventory: heads, BootFiles: dhcp.DefaultBootTable()}
	reqs := make([]*dhcpv4.DHCPv4, 256)
	for i := range reqs {
		r, err := dhcpv4.NewDiscovery(macs[i*37%len(macs)], dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
		if err != nil {
			b.Fatal(err)
		}
		reqs[i] = r
	}
	ctx := context.Background()
	i := 0
	for b.Loop() {
		reply, _, err := srv.Handle(ctx, dhcp.Request{Msg: reqs[i%len(reqs)]})
		if err != nil || reply == nil {
			b.Fatal(err)
		}
		_ = reply.ToBytes()
		i++
	}
}

// BenchmarkRecordDHCP is the head's other share of a firmware's DHCP
// exchange with 10,000 nodes: the recorder's work for its OFFER and ACK
// events (the client's boot events, the node found by MAC, two timeline
// steps posted to the state writer, the OFFER of a new transaction
// starting a new boot record and archiving the previous one),
// the writer's commits included. cpu-ns/op is the process's CPU time
// (user and system, every goroutine: the writer's encoding and commits
// and the watch that brings them to memory) per exchange, the posted
// events flushed: what a head spends, where ns/op is only the poster's
// wall time.
func BenchmarkRecordDHCP(b *testing.B) {
	heads, macs := cluster10k(b)
	rec := newRecorder(heads.db, nil)
	heads.db.Flush()
	cpu0 := cpuTime()
	i := 0
	defer func() {
		heads.db.Flush()
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(i), "cpu-ns/op")
	}()
	for b.Loop() {
		mac := macs[i*37%len(macs)]
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i*37%len(macs)/250 + 1), byte(i*37%len(macs)%250 + 1)})
		for _, reply := range []dhcp.ReplyType{dhcp.ReplyOffer, dhcp.ReplyAck} {
			rec.dhcp(dhcp.Event{MAC: mac, XID: uint32(i + 1), Request: dhcp.RequestDiscover, Reply: reply, NetBoot: true, Stage: dhcp.StageFirmware,
				Arch: 7, HasArch: true, IP: ip, BootFile: "snponly.efi", Port: 67})
		}
		i++
	}
}

// cpuTime returns the CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
