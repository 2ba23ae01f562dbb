// Package pxe is the boot-policy vocabulary shared by the network-boot
// servers under pxe/: client architectures as firmware reports them in DHCP
// option 93, and the iPXE binary each architecture should be handed.
//
// A server picks the network bootstrap program (NBP) for a firmware client
// from its architecture:
//
//	arch := pxe.Arch(binary.BigEndian.Uint16(option93))
//	nbp, ok := pxe.DefaultBootFiles()[arch]
//	if !ok {
//		return // no iPXE binary for this architecture: do not answer
//	}
//	log.Printf("%s client gets %s", arch, nbp) // "efi-x64 client gets snponly.efi"
package pxe

import "strconv"

// Arch is a client system architecture, DHCP option 93 (RFC 4578, IANA
// "Processor Architecture Types" registry).
type Arch uint16

// Client system architectures from the IANA registry that matter for
// network boot. Any other uint16 is a valid Arch too; it just has no name.
const (
	// ArchBIOS is an x86 PC with legacy BIOS (PXE from a NIC option ROM).
	ArchBIOS Arch = 0
	// ArchEFIIA32 is 32-bit x86 UEFI.
	ArchEFIIA32 Arch = 6
	// ArchEFIx64 is x86-64 UEFI.
	ArchEFIx64 Arch = 7
	// ArchEFIBC is EFI byte code; many x86-64 UEFI firmwares send it
	// instead of ArchEFIx64.
	ArchEFIBC Arch = 9
	// ArchEFIARM32 is 32-bit ARM UEFI.
	ArchEFIARM32 Arch = 10
	// ArchEFIARM64 is 64-bit ARM UEFI.
	ArchEFIARM64 Arch = 11
	// ArchEFIIA32HTTP is 32-bit x86 UEFI HTTP boot.
	ArchEFIIA32HTTP Arch = 15
	// ArchEFIx64HTTP is x86-64 UEFI HTTP boot (vendor class "HTTPClient").
	ArchEFIx64HTTP Arch = 16
	// ArchEFIBCHTTP is EFI byte code HTTP boot.
	ArchEFIBCHTTP Arch = 17
	// ArchEFIARM32HTTP is 32-bit ARM UEFI HTTP boot.
	ArchEFIARM32HTTP Arch = 18
	// ArchEFIARM64HTTP is 64-bit ARM UEFI HTTP boot.
	ArchEFIARM64HTTP Arch = 19
	// ArchBIOSHTTP is an x86 PC with BIOS booting over HTTP.
	ArchBIOSHTTP Arch = 20
	// ArchEFIRISCV64 is 64-bit RISC-V UEFI.
	ArchEFIRISCV64 Arch = 27
	// ArchEFIRISCV64HTTP is 64-bit RISC-V UEFI HTTP boot.
	ArchEFIRISCV64HTTP Arch = 28
)

var archNames = map[Arch]string{
	ArchBIOS:           "bios",
	1:                  "nec-pc98",
	2:                  "efi-itanium",
	3:                  "dec-alpha",
	4:                  "arc-x86",
	5:                  "intel-lean-client",
	ArchEFIIA32:        "efi-ia32",
	ArchEFIx64:         "efi-x64",
	8:                  "efi-xscale",
	ArchEFIBC:          "efi-bc",
	ArchEFIARM32:       "efi-arm32",
	ArchEFIARM64:       "efi-arm64",
	12:                 "ppc-open-firmware",
	13:                 "ppc-epapr",
	14:                 "ppc-opal",
	ArchEFIIA32HTTP:    "efi-ia32-http",
	ArchEFIx64HTTP:     "efi-x64-http",
	ArchEFIBCHTTP:      "efi-bc-http",
	ArchEFIARM32HTTP:   "efi-arm32-http",
	ArchEFIARM64HTTP:   "efi-arm64-http",
	ArchBIOSHTTP:       "bios-http",
	21:                 "uboot-arm32",
	22:                 "uboot-arm64",
	23:                 "uboot-arm32-http",
	24:                 "uboot-arm64-http",
	25:                 "efi-riscv32",
	26:                 "efi-riscv32-http",
	ArchEFIRISCV64:     "efi-riscv64",
	ArchEFIRISCV64HTTP: "efi-riscv64-http",
	29:                 "efi-riscv128",
	30:                 "efi-riscv128-http",
	31:                 "s390-basic",
	32:                 "s390-extended",
	33:                 "efi-mips32",
	34:                 "efi-mips64",
	35:                 "efi-sunway32",
	36:                 "efi-sunway64",
	37:                 "efi-loongarch32",
	38:                 "efi-loongarch32-http",
	39:                 "efi-loongarch64",
	40:                 "efi-loongarch64-http",
	41:                 "arm-rpiboot",
}

// String returns the architecture's short lower-case name, such as "bios" or
// "efi-x64", or "arch-N" for a value the registry does not name.
func (a Arch) String() string {
	if s, ok := archNames[a]; ok {
		return s
	}
	return "arch-" + strconv.Itoa(int(a))
}

// DefaultBootFiles maps option 93 values to the iPXE binary that Debian's
// ipxe package ships for them: ArchBIOS to "undionly.kpxe", ArchEFIx64 and
// ArchEFIBC to "snponly.efi". It returns a new map on every call, so callers
// may change it.
func DefaultBootFiles() map[Arch]string {
	return map[Arch]string{
		ArchBIOS:   "undionly.kpxe",
		ArchEFIx64: "snponly.efi",
		ArchEFIBC:  "snponly.efi",
	}
}
