// Package storm is ramboot's boot-storm load generator (`ramboot bench
// storm`): it powers on N simulated nodes within a spread of time and runs,
// for each, the real client side of the boot chain against running heads,
// then reports how the heads held up.
//
// Each simulated node, from its own address and MAC:
//
//  1. DHCP as PXE firmware (DISCOVER/OFFER/REQUEST/ACK, option 93, vendor
//     class PXEClient, the PXE specification's 4-8-16-32 s retransmissions),
//     through a relay agent (giaddr) so that thousands of nodes share one
//     machine, or broadcast on the link;
//  2. TFTP of the iPXE binary the head named, at blksize 1468, in lock-step
//     with EDK2's timer and retries (UEFI firmware first probes the size and
//     aborts, as OVMF does);
//  3. DHCP again as iPXE (option 175, user class iPXE, iPXE's 1-2-4-8 s
//     schedule), which yields the script's URL;
//  4. the iPXE script over HTTP, run by an interpreter of iPXE's commands
//     (internal/ipxescript), so the script's own retries and reboot are
//     what the node does;
//  5. the kernel, the image, the agent archive and the overlay, as the
//     script fetches them, each checked against its Content-Length and its
//     digest (the ETag ramboot serves, sha256 of the body);
//  6. the agent's part: the overlay (zstd newc cpio) is unpacked, its
//     etc/ramboot/node.json read, and the node registers at
//     /api/v1/nodes/{node}/register with the token it found there, from a
//     privileged port, after Config.BootTime.
//
// The nodes are inventory entries created for the run through an Inventory
// (the admin API) and removed after it. A node that has not finished its
// last phase by the deadline is lost, and Run reports it.
//
//	rep, err := storm.Run(ctx, storm.Config{
//		Nodes: 1000, Heads: []storm.Head{{DHCP: head, Metrics: "http://10.77.0.1/metrics"}},
//		Relay: giaddr, FirstIP: netip.MustParseAddr("10.77.128.1"), Inventory: inv,
//	})
//	rep.WriteTable(os.Stdout)
//
// The node addresses must be addresses of the machine the generator runs
// on; on Linux a local route makes a whole range bindable
// (`ip route add local 10.77.128.0/17 dev lo`), and the head reaches it
// through a route via the generator. docs/storm.md has the set-up.
package storm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/ramboot/ramboot/provisioner/storm/internal/dhcpc"
)

// Phase is one step of a node's boot.
type Phase int

// The phases, in the order a node runs them. The zero Phase is none: a
// Config's zero Until means every phase.
const (
	PhaseDHCP     Phase = iota + 1 // firmware DHCP: DISCOVER to ACK
	PhaseTFTP                      // the iPXE binary over TFTP
	PhaseIPXEDHCP                  // iPXE's DHCP, which yields the script URL
	PhaseScript                    // the iPXE script over HTTP
	PhaseKernel                    // the kernel over HTTP
	PhaseImage                     // the image's root file system over HTTP
	PhaseAgent                     // the agent archive over HTTP
	PhaseOverlay                   // the node's overlay over HTTP
	PhaseRegister                  // the agent's registration with its token
	numPhases
)

var phaseNames = [numPhases]string{"", "dhcp", "tftp", "ipxe-dhcp", "script", "kernel", "image", "agent", "overlay", "register"}

func (p Phase) String() string {
	if p < PhaseDHCP || p >= numPhases {
		return fmt.Sprintf("phase(%d)", int(p))
	}
	return phaseNames[p]
}

// Phases returns every phase, in order.
func Phases() []Phase {
	var out []Phase
	for p := PhaseDHCP; p < numPhases; p++ {
		out = append(out, p)
	}
	return out
}

// ParsePhase returns the phase named s.
func ParsePhase(s string) (Phase, error) {
	for i, n := range phaseNames {
		if n == s && n != "" {
			return Phase(i), nil
		}
	}
	return 0, fmt.Errorf("phase %q: must be one of %s", s, strings.Join(phaseNames[PhaseDHCP:], ", "))
}

// Firmware is what the simulated nodes boot with.
type Firmware string

// The firmware kinds.
const (
	// FirmwareUEFI is UEFI x64 PXE (arch 7): DHCP, a TFTP size probe and
	// fetch of the iPXE binary, then iPXE.
	FirmwareUEFI Firmware = "uefi"
	// FirmwareBIOS is a BIOS PXE ROM (arch 0): DHCP, TFTP, then iPXE.
	FirmwareBIOS Firmware = "bios"
	// FirmwareIPXE is a NIC whose ROM is iPXE itself (QEMU's): no firmware
	// DHCP or TFTP, iPXE's DHCP first.
	FirmwareIPXE Firmware = "ipxe"
)

// Head is one head the storm targets.
type Head struct {
	// Name names it in the report; default "head" and its index.
	Name string
	// DHCP is where the relay agent sends requests: the head's address,
	// port 67 when the port is zero. Unused on the direct path, where
	// requests are broadcast.
	DHCP netip.AddrPort
	// Metrics is the URL of its Prometheus metrics (http://HEAD/metrics);
	// empty = no CPU, memory or server counters in the report.
	Metrics string
	// PID is its process id when it runs on this machine: CPU time and
	// peak memory are then also read from /proc/PID. 0 = not local.
	PID int
}

// Defaults of Config's zero fields.
const (
	DefaultNamePrefix  = "storm"
	DefaultDeadline    = 15 * time.Minute
	DefaultDigestEvery = 10
	DefaultHTTPStall   = 30 * time.Second
	DefaultMaxReboots  = 3
	DefaultRebootTime  = 5 * time.Second
	DefaultSample      = 500 * time.Millisecond
)

// DefaultFirstMAC is node 1's MAC when Config.FirstMAC is nil: locally
// administered, so it collides with no NIC's.
var DefaultFirstMAC = net.HardwareAddr{0x02, 0x52, 0x42, 0x00, 0x00, 0x01}

// Config is one storm. Nodes, Heads and FirstIP are required; Relay or
// Interface names the DHCP path.
type Config struct {
	// Nodes is how many nodes power on.
	Nodes int
	// Heads are the heads the storm boots from (one, or several on one
	// link answering identically).
	Heads []Head
	// Relay is the relay agent's address (giaddr), an address of this
	// machine the heads reach; the zero value means the direct path:
	// requests broadcast on Interface.
	Relay netip.Addr
	// Interface is the link the direct path broadcasts on.
	Interface string
	// FirstIP is node 1's address; node i has FirstIP+i-1. Every one must
	// be bindable here (a local route).
	FirstIP netip.Addr
	// FirstMAC is node 1's MAC; node i has FirstMAC+i-1. Nil means
	// DefaultFirstMAC.
	FirstMAC net.HardwareAddr
	// NamePrefix starts every node's name (prefix and a 5-digit number:
	// storm00001); empty means DefaultNamePrefix.
	NamePrefix string
	// Image is the image the nodes boot; empty = the head's default.
	Image string
	// Firmware is what the nodes boot with; empty means FirmwareUEFI.
	Firmware Firmware
	// Until is the last phase the nodes run (PhaseScript for a DHCP, TFTP
	// and script storm); zero means PhaseRegister: every phase.
	Until Phase
	// Spread spreads the nodes' power-on times evenly over this long; 0
	// powers them all on at once.
	Spread time.Duration
	// MaxActive caps the nodes booting at once (the others wait to be
	// powered on); 0 = no cap.
	MaxActive int
	// MaxDownloads caps kernel and image downloads in flight; 0 = no cap.
	MaxDownloads int
	// BootTime is how long a node takes from iPXE's boot to the agent's
	// registration (the kernel and the init): 0 registers at once.
	BootTime time.Duration
	// Deadline bounds the storm from the first power-on; a node that has
	// not finished by then is lost. 0 means DefaultDeadline.
	Deadline time.Duration
	// DigestEvery checks the sha256 of the kernel, image and agent
	// archive of every Nth node (1: every node); 0 means
	// DefaultDigestEvery, negative never. Sizes, the script and the
	// overlay are always checked.
	DigestEvery int
	// HTTPStall fails a download that received nothing for this long, as
	// iPXE's TCP gives up; 0 means DefaultHTTPStall.
	HTTPStall time.Duration
	// FirmwareDHCP and IPXEDHCP are the DHCP retransmission schedules;
	// nil means dhcpc.FirmwareSchedule and dhcpc.IPXESchedule.
	FirmwareDHCP, IPXEDHCP []time.Duration
	// TFTPTimeout, TFTPRetries and TFTPBlockSize are the firmware's TFTP
	// settings; 0 means tftpc's defaults (EDK2's: 4 s, 6, 1468).
	TFTPTimeout   time.Duration
	TFTPRetries   int
	TFTPBlockSize int
	// MaxReboots is how many times a node starts over from its firmware
	// (a boot attempt that failed before the kernel, a script that gave up
	// and rebooted) before it is lost; 0 means DefaultMaxReboots.
	MaxReboots int
	// RebootTime is how long a node takes from a failed boot attempt to
	// its firmware's next DHCP (the boot manager, or a reboot's POST); 0
	// means DefaultRebootTime, negative none.
	RebootTime time.Duration
	// LinkRate is the head link's rate in bits per second, the yardstick
	// of the report's throughput; 0 = none.
	LinkRate float64
	// Inventory creates the nodes before the storm and removes them after;
	// nil means they exist already and stay.
	Inventory Inventory
	// KeepNodes leaves the nodes in the inventory after the storm.
	KeepNodes bool
	// Misbehave adds a misbehaving client during the storm; zero = none.
	Misbehave Misbehave
	// Compare lists plain-download targets (nginx, say) that serve the
	// same files by digest; after the storm the same clients download the
	// same kernel and image bytes from ramboot and from each, alternating.
	Compare []Target
	// CompareRounds repeats the comparison, alternating which side goes
	// first; 0 means 1.
	CompareRounds int
	// SampleInterval is how often the heads' CPU and memory are sampled;
	// 0 means DefaultSample.
	SampleInterval time.Duration
	// Progress receives one line a second while the storm runs; nil =
	// none.
	Progress io.Writer
	// Logger receives per-node failures at Debug; nil = discard.
	Logger *slog.Logger
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.FirstMAC == nil {
		c.FirstMAC = DefaultFirstMAC
	}
	if c.NamePrefix == "" {
		c.NamePrefix = DefaultNamePrefix
	}
	if c.Firmware == "" {
		c.Firmware = FirmwareUEFI
	}
	if c.Until == 0 {
		c.Until = PhaseRegister
	}
	if c.Deadline <= 0 {
		c.Deadline = DefaultDeadline
	}
	if c.DigestEvery == 0 {
		c.DigestEvery = DefaultDigestEvery
	}
	if c.HTTPStall <= 0 {
		c.HTTPStall = DefaultHTTPStall
	}
	if c.FirmwareDHCP == nil {
		c.FirmwareDHCP = dhcpc.FirmwareSchedule
	}
	if c.IPXEDHCP == nil {
		c.IPXEDHCP = dhcpc.IPXESchedule
	}
	if c.MaxReboots <= 0 {
		c.MaxReboots = DefaultMaxReboots
	}
	if c.RebootTime == 0 {
		c.RebootTime = DefaultRebootTime
	}
	if c.SampleInterval <= 0 {
		c.SampleInterval = DefaultSample
	}
	for i := range c.Heads {
		if c.Heads[i].Name == "" {
			c.Heads[i].Name = fmt.Sprintf("head%d", i+1)
		}
		if d := c.Heads[i].DHCP; d.IsValid() && d.Port() == 0 {
			c.Heads[i].DHCP = netip.AddrPortFrom(d.Addr(), 67)
		}
	}
	return c
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Nodes < 1 {
		errs = append(errs, fmt.Errorf("nodes: %d: at least one", c.Nodes))
	}
	if c.Nodes > 1_000_000 {
		errs = append(errs, fmt.Errorf("nodes: %d: at most 1000000", c.Nodes))
	}
	if len(c.Heads) == 0 {
		errs = append(errs, errors.New("heads: at least one"))
	}
	for i, h := range c.Heads {
		if c.Relay.IsValid() && !h.DHCP.Addr().Is4() {
			errs = append(errs, fmt.Errorf("heads[%d]: dhcp: %q is not an IPv4 address (the relay needs one)", i, h.DHCP))
		}
	}
	if !c.Relay.IsValid() && c.Interface == "" && c.Firmware != FirmwareIPXE {
		errs = append(errs, errors.New("relay or interface: one is needed for DHCP"))
	}
	if !c.Relay.IsValid() && c.Interface == "" && c.Firmware == FirmwareIPXE && c.Until >= PhaseIPXEDHCP {
		errs = append(errs, errors.New("relay or interface: one is needed for DHCP"))
	}
	if c.Relay.IsValid() && !c.Relay.Is4() {
		errs = append(errs, fmt.Errorf("relay: %s is not an IPv4 address", c.Relay))
	}
	if !c.FirstIP.Is4() {
		errs = append(errs, fmt.Errorf("first ip: %q is not an IPv4 address", c.FirstIP))
	} else if last := addIP(c.FirstIP, max(c.Nodes-1, 0)); !last.IsValid() {
		errs = append(errs, fmt.Errorf("first ip: %s + %d nodes runs past 255.255.255.255", c.FirstIP, c.Nodes))
	}
	if c.FirstMAC != nil && len(c.FirstMAC) != 6 {
		errs = append(errs, fmt.Errorf("first mac: %s is not a 6-byte MAC", c.FirstMAC))
	}
	switch c.Firmware {
	case "", FirmwareUEFI, FirmwareBIOS, FirmwareIPXE:
	default:
		errs = append(errs, fmt.Errorf("firmware: %q: must be uefi, bios or ipxe", c.Firmware))
	}
	if c.Until < 0 || c.Until >= numPhases {
		errs = append(errs, fmt.Errorf("until: %v is not a phase", c.Until))
	}
	if c.Firmware == FirmwareIPXE && c.Until != 0 && c.Until < PhaseIPXEDHCP {
		errs = append(errs, fmt.Errorf("until: %v: firmware ipxe has no %v phase", c.Until, c.Until))
	}
	if c.Spread < 0 || c.BootTime < 0 {
		errs = append(errs, errors.New("spread, boot time: must not be negative"))
	}
	if c.MaxActive < 0 || c.MaxDownloads < 0 {
		errs = append(errs, errors.New("max active, max downloads: must not be negative"))
	}
	if c.LinkRate < 0 {
		errs = append(errs, errors.New("link rate: must not be negative"))
	}
	if err := c.Misbehave.validate(); err != nil {
		errs = append(errs, fmt.Errorf("misbehave: %w", err))
	}
	for i, t := range c.Compare {
		if t.Name == "" || t.BaseURL == "" {
			errs = append(errs, fmt.Errorf("compare[%d]: a name and a base URL", i))
		}
	}
	return errors.Join(errs...)
}

// addIP returns a+n, or the zero Addr past the end of the address space.
func addIP(a netip.Addr, n int) netip.Addr {
	if !a.Is4() {
		return netip.Addr{}
	}
	b := a.As4()
	v := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	v += uint64(n)
	if v > 0xffffffff {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// addMAC returns m+n (the low 3 bytes count; the vendor part stays).
func addMAC(m net.HardwareAddr, n int) net.HardwareAddr {
	out := make(net.HardwareAddr, len(m))
	copy(out, m)
	carry := n
	for i := len(out) - 1; i >= 0 && carry > 0; i-- {
		s := int(out[i]) + carry
		out[i] = byte(s)
		carry = s >> 8
	}
	return out
}

// NodeName returns node i's name (from 1).
func (c Config) NodeName(i int) string {
	p := c.NamePrefix
	if p == "" {
		p = DefaultNamePrefix
	}
	return fmt.Sprintf("%s%05d", p, i)
}

// NodeSpecs returns the nodes the storm boots.
func (c Config) NodeSpecs() []NodeSpec {
	c = c.withDefaults()
	out := make([]NodeSpec, c.Nodes)
	for i := range out {
		out[i] = NodeSpec{Name: c.NodeName(i + 1), MAC: addMAC(c.FirstMAC, i), IP: addIP(c.FirstIP, i), Image: c.Image}
	}
	return out
}
