package dhcp

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ramboot/ramboot/pxe"
)

// PXEPort is the UDP port of PXE boot servers (the PXE specification's
// "boot server discovery" port): firmware that got an address from one DHCP
// server and a PXE offer without a boot file from another asks there, with
// a DHCPREQUEST, for its boot file. EDK2 (OVMF and most UEFI firmware) does
// so for every proxy offer.
const PXEPort = 4011

// Stage is how far a client's network boot has come, as its request tells.
type Stage string

// The stages a request can show.
const (
	// StageOS is a client that shows no network-boot options (no option
	// 60 PXEClient or HTTPClient, no option 93, not iPXE): an operating
	// system's DHCP client, such as a booted node renewing its address. It
	// gets an address and no boot file.
	StageOS Stage = "os"
	// StageFirmware is a firmware PXE client (a NIC's PXE ROM, UEFI's PXE
	// driver): option 60 "PXEClient..." or option 93. It gets an iPXE
	// binary to fetch over TFTP.
	StageFirmware Stage = "firmware"
	// StageHTTPBoot is UEFI HTTP boot: option 60 "HTTPClient...". It gets
	// the URL of an iPXE binary and option 60 "HTTPClient".
	StageHTTPBoot Stage = "http-boot"
	// StageIPXE is iPXE: option 175 present or user class (option 77)
	// "iPXE". It gets its node's script URL, never a binary again, so it
	// cannot loop.
	StageIPXE Stage = "ipxe"
)

// NetBoot reports whether the stage is a network-boot client (firmware,
// HTTP boot or iPXE) rather than an operating system.
func (s Stage) NetBoot() bool { return s != StageOS && s != "" }

// BootRequest is everything the boot-file choice depends on: the message
// type, the port the request came in on and options 60, 77, 93 and 175,
// plus the node's override from the inventory. ParseBootRequest fills it
// from a message.
type BootRequest struct {
	// Type is the message type (option 53).
	Type dhcpv4.MessageType
	// Port is the server port the request came in on: 67, or PXEPort.
	Port int
	// VendorClass is option 60, such as "PXEClient:Arch:00007:UNDI:003016"
	// or "HTTPClient:Arch:00016:UNDI:003001".
	VendorClass string
	// UserClass holds option 77's class names (RFC 3004, or iPXE's raw
	// "iPXE").
	UserClass []string
	// Arch is the client architecture: option 93, else the Arch field of a
	// PXEClient/HTTPClient vendor class; HasArch says whether either was
	// present.
	Arch    pxe.Arch
	HasArch bool
	// Etherboot reports that option 175 (iPXE's feature flags) is present.
	Etherboot bool
	// Override is the node's own boot file (from the inventory), which
	// replaces the table's choice for firmware and HTTP boot, for firmware
	// quirks: "ipxe.efi" where snponly.efi hangs, or the reverse. Empty
	// means none.
	Override string
}

// ParseBootRequest extracts the fields of a BootRequest from a message
// that arrived on port.
func ParseBootRequest(m *dhcpv4.DHCPv4, port int) BootRequest {
	r := BootRequest{
		Type:        msgType(m),
		Port:        port,
		VendorClass: m.ClassIdentifier(),
		Etherboot:   m.Options.Has(dhcpv4.OptionEtherboot),
	}
	if m.Options.Has(dhcpv4.OptionUserClassInformation) {
		r.UserClass = m.UserClass()
	}
	if v := m.Options.Get(dhcpv4.OptionClientSystemArchitectureType); len(v) >= 2 {
		r.Arch, r.HasArch = pxe.Arch(binary.BigEndian.Uint16(v)), true
	} else if a, ok := vendorClassArch(r.VendorClass); ok {
		r.Arch, r.HasArch = a, true
	}
	return r
}

// vendorClassArch reads the architecture from a vendor class such as
// "PXEClient:Arch:00007:UNDI:003016".
func vendorClassArch(vc string) (pxe.Arch, bool) {
	for _, prefix := range []string{"PXEClient:Arch:", "HTTPClient:Arch:"} {
		rest, ok := strings.CutPrefix(vc, prefix)
		if !ok || len(rest) < 5 {
			continue
		}
		n, err := strconv.ParseUint(rest[:5], 10, 16)
		if err != nil {
			return 0, false
		}
		return pxe.Arch(n), true
	}
	return 0, false
}

// Stage classifies the client: iPXE first (iPXE also sends PXEClient),
// then HTTP boot, then firmware PXE, else an operating system.
func (r BootRequest) Stage() Stage {
	switch {
	case r.Etherboot || slices.Contains(r.UserClass, "iPXE"):
		return StageIPXE
	case strings.HasPrefix(r.VendorClass, "HTTPClient"):
		return StageHTTPBoot
	case strings.HasPrefix(r.VendorClass, "PXEClient") || r.HasArch:
		return StageFirmware
	default:
		return StageOS
	}
}

// Boot is the boot-file choice for one request.
type Boot struct {
	// Stage is the client's stage.
	Stage Stage
	// File is the network bootstrap program: a TFTP catalogue name for
	// firmware, a file name under the HTTP boot URL for HTTP boot. Empty
	// with Script, and for an operating system (address only).
	File string
	// Script reports an iPXE client: it gets its node's script URL.
	Script bool
	// Ignore, when not empty, says why the request gets no answer at all,
	// such as "no boot file for arch efi-arm64 (11)".
	Ignore string

	reason ignoreReason
}

// BootTable maps client architectures (option 93) to the iPXE binary the
// firmware of that architecture boots: a TFTP catalogue name for PXE
// firmware, a file under the HTTP boot URL for UEFI HTTP boot (arch 16,
// 19, ...). It is the configuration behind Choose.
type BootTable map[pxe.Arch]string

// DefaultBootTable is the table a Server with nil BootFiles uses:
// pxe.DefaultBootFiles plus UEFI x64 HTTP boot (16) to snponly.efi.
func DefaultBootTable() BootTable {
	t := BootTable(pxe.DefaultBootFiles())
	t[pxe.ArchEFIx64HTTP] = "snponly.efi"
	return t
}

// Choose is the boot-file decision, a pure function of the request and the
// table:
//
//   - only DISCOVER, REQUEST and INFORM are answered, and port 4011 answers
//     REQUEST and INFORM only (PXE boot server requests);
//   - iPXE gets its script (Script), whatever the override;
//   - an operating system gets an address only on port 67 and nothing on
//     port 4011;
//   - firmware and HTTP boot get the override if set, else the table's file
//     for their architecture; an architecture without one is ignored, so
//     that another server may answer it.
func (t BootTable) Choose(r BootRequest) Boot {
	b := Boot{Stage: r.Stage()}
	switch r.Type {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
	default:
		return b.ignore(reasonUnsupported, "no boot file for a "+r.Type.String())
	}
	if r.Port == PXEPort && r.Type == dhcpv4.MessageTypeDiscover {
		return b.ignore(reasonUnsupported, "port 4011 answers REQUEST and INFORM only")
	}
	switch b.Stage {
	case StageIPXE:
		b.Script = true
	case StageOS:
		if r.Port == PXEPort {
			return b.ignore(reasonNotPXE, "not a PXE client (port 4011)")
		}
	default:
		b.File = r.Override
		if b.File == "" {
			b.File = t[r.Arch]
		}
		if b.File == "" {
			return b.ignore(reasonUnknownArch, fmt.Sprintf("no boot file for arch %s (%d)", r.Arch, uint16(r.Arch)))
		}
	}
	return b
}

func (b Boot) ignore(reason ignoreReason, why string) Boot {
	b.File, b.Script, b.Ignore, b.reason = "", false, why, reason
	return b
}
