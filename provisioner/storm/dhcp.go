package storm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/provisioner/storm/internal/dhcpc"
)

// lease is what a DHCP exchange gave a node.
type lease struct {
	ip       netip.Addr // yiaddr
	server   netip.Addr // server identifier (option 54)
	next     netip.Addr // siaddr: the TFTP server
	bootFile string     // file, or option 67
}

// client is who sends a DHCP request.
type client int

const (
	asFirmware client = iota
	asIPXE
)

// pxeParams is the parameter request list of EDK2's PXE base code.
var pxeParams = []dhcpv4.OptionCode{
	dhcpv4.OptionSubnetMask, dhcpv4.OptionTimeOffset, dhcpv4.OptionRouter, dhcpv4.OptionTimeServer,
	dhcpv4.OptionNameServer, dhcpv4.OptionDomainNameServer, dhcpv4.OptionHostName, dhcpv4.OptionBootFileSize,
	dhcpv4.OptionDomainName, dhcpv4.OptionRootPath, dhcpv4.OptionExtensionsPath, dhcpv4.OptionMaximumDatagramAssemblySize,
	dhcpv4.OptionDefaultIPTTL, dhcpv4.OptionBroadcastAddress, dhcpv4.OptionNetworkInformationServiceDomain,
	dhcpv4.OptionNetworkInformationServers, dhcpv4.OptionNTPServers, dhcpv4.OptionVendorSpecificInformation,
	dhcpv4.OptionRequestedIPAddress, dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionServerIdentifier,
	dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue, dhcpv4.OptionClassIdentifier,
	dhcpv4.OptionTFTPServerName, dhcpv4.OptionBootfileName,
}

// ipxeParams is iPXE's parameter request list.
var ipxeParams = []dhcpv4.OptionCode{
	dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionLogServer,
	dhcpv4.OptionHostName, dhcpv4.OptionDomainName, dhcpv4.OptionRootPath, dhcpv4.OptionVendorSpecificInformation,
	dhcpv4.OptionClassIdentifier, dhcpv4.OptionTFTPServerName, dhcpv4.OptionBootfileName, dhcpv4.OptionEtherboot,
	dhcpv4.OptionUserClassInformation,
}

// ipxeFeatures is the option 175 iPXE sends: its features (HTTP, DNS,
// TFTP, PXE extensions) and its version 1.0.0.
var ipxeFeatures = []byte{0x13, 1, 1, 0x11, 1, 1, 0x19, 1, 1, 0x15, 1, 1, 0xeb, 3, 1, 0, 0}

// arch returns the client architecture (option 93) and the UNDI version
// in the vendor class of the firmware.
func (c Config) arch() (iana.Arch, string) {
	if c.Firmware == FirmwareBIOS {
		return iana.INTEL_X86PC, "002001"
	}
	return iana.EFI_X86_64, "003016"
}

// request builds a DISCOVER (offer nil) or the REQUEST for offer, as the
// firmware or iPXE sends them for node n.
func (r *runner) request(n *nodeRun, who client, xid dhcpv4.TransactionID, offer *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	arch, undi := r.cfg.arch()
	mods := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(n.spec.MAC),
		dhcpv4.WithTransactionID(xid),
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1472)),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 3, 16}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, n.uuid[:]...)),
	}
	if who == asFirmware {
		mods = append(mods,
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier(fmt.Sprintf("PXEClient:Arch:%05d:UNDI:%s", uint16(arch), undi))),
			dhcpv4.WithOption(dhcpv4.OptParameterRequestList(pxeParams...)))
	} else {
		mods = append(mods,
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier(fmt.Sprintf("PXEClient:Arch:%05d:UNDI:003010", uint16(arch)))),
			dhcpv4.WithOption(dhcpv4.OptParameterRequestList(ipxeParams...)),
			dhcpv4.WithGeneric(dhcpv4.OptionUserClassInformation, []byte("iPXE")),
			dhcpv4.WithGeneric(dhcpv4.OptionEtherboot, ipxeFeatures),
			dhcpv4.WithGeneric(dhcpv4.OptionClientIdentifier, append([]byte{1}, n.spec.MAC...)))
	}
	if offer == nil {
		mods = append(mods, dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover))
	} else {
		mods = append(mods, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())))
	}
	return dhcpv4.New(mods...)
}

// dora runs DISCOVER/OFFER then REQUEST/ACK for node n, retransmitting on
// schedule. The first offer with an address wins, as it does for
// firmware; the ACK must come from its server.
func (r *runner) dora(ctx context.Context, n *nodeRun, who client, ph Phase) (lease, error) {
	schedule := r.cfg.FirmwareDHCP
	if who == asIPXE {
		schedule = r.cfg.IPXEDHCP
	}
	var xid dhcpv4.TransactionID
	if _, err := rand.Read(xid[:]); err != nil {
		return lease{}, err
	}
	disc, err := r.request(n, who, xid, nil)
	if err != nil {
		return lease{}, phaseErr(ph, "build", err)
	}
	offer, st, err := r.dhcp.Exchange(ctx, disc, schedule, func(m *dhcpv4.DHCPv4) bool {
		return m.MessageType() == dhcpv4.MessageTypeOffer && !m.YourIPAddr.IsUnspecified() && m.ServerIdentifier() != nil
	})
	n.retry(ph, "discover-retransmit", st.Sent-1)
	if err != nil {
		return lease{}, dhcpErr(ph, "discover", err)
	}
	req, err := r.request(n, who, xid, offer)
	if err != nil {
		return lease{}, phaseErr(ph, "build", err)
	}
	sid := offer.ServerIdentifier()
	var nak bool
	ack, st, err := r.dhcp.Exchange(ctx, req, schedule, func(m *dhcpv4.DHCPv4) bool {
		if !m.ServerIdentifier().Equal(sid) {
			return false
		}
		if m.MessageType() == dhcpv4.MessageTypeNak {
			nak = true
			return true
		}
		return m.MessageType() == dhcpv4.MessageTypeAck
	})
	n.retry(ph, "request-retransmit", st.Sent-1)
	if err != nil {
		return lease{}, dhcpErr(ph, "request", err)
	}
	if nak {
		return lease{}, phaseErr(ph, "nak", fmt.Errorf("%s refused the request: %s", sid, ack.Message()))
	}
	l := lease{bootFile: ack.BootFileName}
	l.ip, _ = netip.AddrFromSlice(ack.YourIPAddr.To4())
	l.server, _ = netip.AddrFromSlice(sid.To4())
	l.next, _ = netip.AddrFromSlice(ack.ServerIPAddr.To4())
	if f := ack.BootFileNameOption(); f != "" {
		l.bootFile = f
	}
	if l.ip != n.spec.IP {
		return l, phaseErr(ph, "wrong-address", fmt.Errorf("%s offered %s, the inventory reserves %s", sid, l.ip, n.spec.IP))
	}
	if l.bootFile == "" {
		return l, phaseErr(ph, "no-boot-file", fmt.Errorf("%s gave no boot file", sid))
	}
	n.head = r.headName(l.server)
	return l, nil
}

func dhcpErr(ph Phase, step string, err error) error {
	switch {
	case errors.Is(err, dhcpc.ErrTimeout):
		return phaseErr(ph, step+"-timeout", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return phaseErr(ph, step, err)
}

// headName names the head whose address is ip.
func (r *runner) headName(ip netip.Addr) string {
	for _, h := range r.cfg.Heads {
		if h.DHCP.Addr() == ip {
			return h.Name
		}
	}
	return ip.String()
}

// nodeUUID is a node's SMBIOS UUID (option 97), stable per MAC.
func nodeUUID(mac net.HardwareAddr) [16]byte {
	sum := sha256.Sum256(append([]byte("ramboot storm uuid "), mac...))
	var u [16]byte
	copy(u[:], sum[:16])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
