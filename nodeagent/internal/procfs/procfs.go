// Package procfs parses the few files under /proc that the node agent
// reports or obeys: /proc/meminfo, /proc/uptime, /proc/loadavg,
// /proc/cmdline and /proc/self/mountinfo. Readers take an fs.FS rooted at
// the node's root, so tests can hand them a directory or an fstest.MapFS:
//
//	root := os.DirFS("/")
//	mem, err := procfs.ReadMemTotal(root)   // bytes
//	up, err := procfs.ReadUptime(root)      // seconds
//	cl, err := procfs.ReadCmdline(root)
//	path, ok := cl.Get("ramboot.exec")
//	mounts, err := procfs.ReadMountinfo(root)
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"strconv"
	"strings"
)

// The files the readers read, as fs.FS paths.
const (
	MeminfoPath = "proc/meminfo"
	UptimePath  = "proc/uptime"
	CmdlinePath = "proc/cmdline"
	LoadavgPath = "proc/loadavg"
)

// ReadMemTotal returns MemTotal from MeminfoPath in root, in bytes.
func ReadMemTotal(root fs.FS) (int64, error) {
	b, err := fs.ReadFile(root, MeminfoPath)
	if err != nil {
		return 0, fmt.Errorf("read meminfo: %w", err)
	}
	return ParseMemTotal(b)
}

// ParseMemTotal returns the MemTotal line of /proc/meminfo content in
// bytes ("MemTotal:  1014020 kB").
func ParseMemTotal(b []byte) (int64, error) { return ParseMeminfo(b, "MemTotal") }

// ParseMeminfo returns the named field of /proc/meminfo content in bytes
// ("MemAvailable:  880000 kB").
func ParseMeminfo(b []byte, field string) (int64, error) {
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte(field+":"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("parse meminfo line %q: want \"%s: N kB\"", bytes.TrimSpace(line), field)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 || kb > math.MaxInt64/1024 {
			return 0, fmt.Errorf("parse meminfo %s %q: out of range or not a number", field, f[0])
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("parse meminfo: no %s line", field)
}

// ReadMeminfo returns the named field of MeminfoPath in root, in bytes.
func ReadMeminfo(root fs.FS, field string) (int64, error) {
	b, err := fs.ReadFile(root, MeminfoPath)
	if err != nil {
		return 0, fmt.Errorf("read meminfo: %w", err)
	}
	return ParseMeminfo(b, field)
}

// ReadUptime returns the system uptime from UptimePath in root, in
// seconds.
func ReadUptime(root fs.FS) (float64, error) {
	b, err := fs.ReadFile(root, UptimePath)
	if err != nil {
		return 0, fmt.Errorf("read uptime: %w", err)
	}
	return ParseUptime(b)
}

// ParseUptime returns the first field of /proc/uptime content ("12.34
// 20.01"): the seconds since boot.
func ParseUptime(b []byte) (float64, error) {
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("parse uptime: empty")
	}
	s, err := strconv.ParseFloat(f[0], 64)
	if err != nil || s < 0 || math.IsInf(s, 0) || math.IsNaN(s) {
		return 0, fmt.Errorf("parse uptime %q: not a number of seconds", f[0])
	}
	return s, nil
}

// ReadSelfRSS returns the calling process's resident memory (VmRSS of
// proc/self/status in root), in bytes.
func ReadSelfRSS(root fs.FS) (int64, error) {
	b, err := fs.ReadFile(root, "proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read status: %w", err)
	}
	return ParseMeminfo(b, "VmRSS")
}

// ReadLoad1 returns the one-minute load average from LoadavgPath in root.
func ReadLoad1(root fs.FS) (float64, error) {
	b, err := fs.ReadFile(root, LoadavgPath)
	if err != nil {
		return 0, fmt.Errorf("read loadavg: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("parse loadavg: empty")
	}
	l, err := strconv.ParseFloat(f[0], 64)
	if err != nil || l < 0 || math.IsInf(l, 0) || math.IsNaN(l) {
		return 0, fmt.Errorf("parse loadavg %q: not a load", f[0])
	}
	return l, nil
}

// Param is one kernel command-line parameter.
type Param struct {
	// Key is the text before the first '=' (the whole word if none).
	Key string
	// Value is the text after the first '=', double quotes removed;
	// empty when the word has no '='.
	Value string
	// HasValue is true when the word had a '='.
	HasValue bool
}

// Cmdline is the kernel command line, word by word.
type Cmdline []Param

// ReadCmdline returns the kernel command line from CmdlinePath in root.
func ReadCmdline(root fs.FS) (Cmdline, error) {
	b, err := fs.ReadFile(root, CmdlinePath)
	if err != nil {
		return nil, fmt.Errorf("read kernel command line: %w", err)
	}
	return ParseCmdline(string(b)), nil
}

// ParseCmdline splits a kernel command line the way the kernel does:
// words are separated by white space except inside double quotes, which
// are then removed (`k="a b"` gives key k and value "a b").
func ParseCmdline(s string) Cmdline {
	var (
		c     Cmdline
		word  strings.Builder
		quote bool
		in    bool
	)
	flush := func() {
		if !in {
			return
		}
		w := word.String()
		word.Reset()
		in = false
		k, v, ok := strings.Cut(w, "=")
		c = append(c, Param{Key: strings.ReplaceAll(k, `"`, ""), Value: strings.ReplaceAll(v, `"`, ""), HasValue: ok})
	}
	for _, r := range s {
		switch {
		case r == '"':
			quote = !quote
			in = true
			word.WriteRune(r)
		case !quote && (r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f' || r == 0):
			flush()
		default:
			in = true
			word.WriteRune(r)
		}
	}
	flush()
	return c
}

// Get returns the value of the last parameter named key, and whether
// there is one.
func (c Cmdline) Get(key string) (string, bool) {
	for i := len(c) - 1; i >= 0; i-- {
		if c[i].Key == key {
			return c[i].Value, true
		}
	}
	return "", false
}
