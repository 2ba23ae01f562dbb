package pxe

import "testing"

func TestArchString(t *testing.T) {
	for _, tt := range []struct {
		arch Arch
		want string
	}{
		{ArchBIOS, "bios"},
		{ArchEFIIA32, "efi-ia32"},
		{ArchEFIx64, "efi-x64"},
		{ArchEFIBC, "efi-bc"},
		{ArchEFIARM64, "efi-arm64"},
		{ArchEFIx64HTTP, "efi-x64-http"},
		{ArchEFIARM64HTTP, "efi-arm64-http"},
		{Arch(41), "arm-rpiboot"},
		{Arch(4242), "arch-4242"},
	} {
		if got := tt.arch.String(); got != tt.want {
			t.Errorf("Arch(%d).String() = %q, want %q", uint16(tt.arch), got, tt.want)
		}
	}
}

func TestDefaultBootFiles(t *testing.T) {
	want := map[Arch]string{0: "undionly.kpxe", 7: "snponly.efi", 9: "snponly.efi"}
	got := DefaultBootFiles()
	if len(got) != len(want) {
		t.Errorf("DefaultBootFiles() = %v, want %v", got, want)
	}
	for a, f := range want {
		if got[a] != f {
			t.Errorf("DefaultBootFiles()[%s] = %q, want %q", a, got[a], f)
		}
	}
	got[ArchBIOS] = "changed"
	if DefaultBootFiles()[ArchBIOS] != "undionly.kpxe" {
		t.Error("DefaultBootFiles returns a shared map")
	}
}
