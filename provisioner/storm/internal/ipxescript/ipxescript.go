// Package ipxescript runs an iPXE script the way iPXE does, for the boot
// storm's simulated nodes: it executes the commands that ramboot's scripts
// (pxe/ipxe) use, line by line with labels and gotos, settings and their
// ${expansions}, `||` and `&&`, and hands every download and every sleep to
// the caller. The script's own retry schedule (attempts, doubling waits, the
// reboot after a failure) is therefore the one the simulated node follows:
// the storm never re-implements it.
//
//	res, err := ipxescript.Run(ctx, script, env)
//	switch res.End {
//	case ipxescript.Boot:   // res.Kernel and res.Initrds were fetched
//	case ipxescript.Reboot: // the script gave up: power-cycle the node
//	}
//
// Supported commands: echo, set (with an optional :type, which is
// ignored), clear, inc, iseq, isset, goto, sleep, kernel, initrd (with
// --name), imgfetch, chain, boot, reboot, exit, shell's `:label` lines and
// `#` comments. Anything else is an error naming the line, so a script the
// simulation cannot follow fails loudly instead of being skipped.
package ipxescript

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
)

// MaxSteps bounds the commands one Run executes, so that a script that
// loops forever ends with an error instead of hanging the node.
const MaxSteps = 100000

// Kind says what a fetch is for.
type Kind string

// The kinds of fetch.
const (
	KindKernel Kind = "kernel"
	KindInitrd Kind = "initrd"
	KindChain  Kind = "chain"
)

// Image is one file the script fetched.
type Image struct {
	// Kind is what the file is for.
	Kind Kind
	// URL is the URL it was fetched from.
	URL string
	// Name is its image name: --name, or the URL's last path element.
	Name string
	// Args is the kernel's command line (KindKernel only).
	Args string
}

// Env is what a script touches outside itself.
type Env interface {
	// Fetch downloads img; an error makes the command fail (the script's
	// `|| goto retry` then runs).
	Fetch(ctx context.Context, img Image) error
	// Sleep waits d, or returns ctx's error.
	Sleep(ctx context.Context, d time.Duration) error
	// Echo receives the text of every echo command.
	Echo(line string)
}

// End is how a script ended.
type End int

// The ends of a script.
const (
	// Boot: the script ran `boot` (or chained) with its images fetched.
	Boot End = iota + 1
	// Reboot: the script ran `reboot`.
	Reboot
	// Exit: the script ran `exit`, or ran off its end.
	Exit
)

func (e End) String() string {
	switch e {
	case Boot:
		return "boot"
	case Reboot:
		return "reboot"
	case Exit:
		return "exit"
	}
	return "unknown"
}

// Result is what a script did.
type Result struct {
	// End is how it ended.
	End End
	// Kernel is the last kernel fetched (zero value if none).
	Kernel Image
	// Initrds are the initrds fetched since, in order.
	Initrds []Image
	// Chained is the script or binary a chain command fetched.
	Chained *Image
	// Steps counts the commands executed.
	Steps int
}

// line is one parsed script line.
type line struct {
	num  int
	text string
}

// errFailed is a command's failure, which `||` catches.
type errFailed struct{ err error }

func (e errFailed) Error() string { return e.err.Error() }
func (e errFailed) Unwrap() error { return e.err }

// Run executes script until it boots, reboots, exits or fails. A command
// that fails outside `||` ends the script with its error, as it ends
// iPXE's.
func Run(ctx context.Context, script []byte, env Env) (Result, error) {
	lines, labels, err := parse(script)
	if err != nil {
		return Result{}, err
	}
	r := &runner{env: env, vars: map[string]string{}, labels: labels}
	for pc := 0; pc < len(lines); {
		if err := ctx.Err(); err != nil {
			return r.res, err
		}
		l := lines[pc]
		pc++
		next, err := r.exec(ctx, l)
		if r.res.Steps > MaxSteps {
			return r.res, fmt.Errorf("script line %d: more than %d commands: a loop that never ends", l.num, MaxSteps)
		}
		if err != nil {
			var f errFailed
			if errors.As(err, &f) {
				return r.res, fmt.Errorf("script line %d: %w", l.num, f.err)
			}
			return r.res, fmt.Errorf("script line %d: %w", l.num, err)
		}
		switch {
		case r.res.End != 0:
			return r.res, nil
		case next >= 0:
			pc = next
		}
	}
	r.res.End = Exit
	return r.res, nil
}

// parse splits the script into commands and finds the labels.
func parse(script []byte) ([]line, map[string]int, error) {
	var lines []line
	labels := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(script))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	num := 0
	for sc.Scan() {
		num++
		t := strings.TrimSpace(sc.Text())
		if num == 1 {
			if !strings.HasPrefix(t, "#!ipxe") {
				return nil, nil, fmt.Errorf("not an iPXE script: first line %q, want #!ipxe", t)
			}
			continue
		}
		switch {
		case t == "" || strings.HasPrefix(t, "#"):
			continue
		case strings.HasPrefix(t, ":"):
			labels[strings.TrimSpace(t[1:])] = len(lines)
			continue
		}
		lines = append(lines, line{num: num, text: t})
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read script: %w", err)
	}
	if num == 0 {
		return nil, nil, errors.New("not an iPXE script: empty")
	}
	return lines, labels, nil
}

type runner struct {
	env    Env
	vars   map[string]string
	labels map[string]int
	res    Result
}

// exec runs one line: commands joined by || and &&, left to right, the way
// iPXE's shell does. It returns the index of the line to go to, or -1.
func (r *runner) exec(ctx context.Context, l line) (int, error) {
	cmds, ops := splitOps(l.text)
	var err error
	for i, c := range cmds {
		if i > 0 {
			// a || b runs b when a failed; a && b when a succeeded.
			if (ops[i-1] == "||") != (err != nil) {
				continue
			}
		}
		var next int
		next, err = r.command(ctx, c)
		if next >= 0 || r.res.End != 0 {
			return next, nil
		}
		var f errFailed
		if err != nil && !errors.As(err, &f) {
			return -1, err // not a command failure: a syntax error, a ctx end
		}
	}
	return -1, err
}

// splitOps splits a line at the || and && operators.
func splitOps(s string) (cmds, ops []string) {
	for {
		i, j := strings.Index(s, "||"), strings.Index(s, "&&")
		k, op := i, "||"
		if k < 0 || (j >= 0 && j < k) {
			k, op = j, "&&"
		}
		if k < 0 {
			return append(cmds, strings.TrimSpace(s)), ops
		}
		cmds, ops = append(cmds, strings.TrimSpace(s[:k])), append(ops, op)
		s = s[k+2:]
	}
}

// expand replaces ${name} (and ${name:type}) with the setting's value;
// unknown settings expand to nothing, as in iPXE.
func (r *runner) expand(s string) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("unterminated ${ in %q", s)
		}
		name, _, _ := strings.Cut(s[i+2:i+j], ":")
		b.WriteString(s[:i])
		b.WriteString(r.vars[name])
		s = s[i+j+1:]
	}
}

func failed(format string, args ...any) error {
	return errFailed{fmt.Errorf(format, args...)}
}

// command runs one command; it returns the line to go to, or -1.
func (r *runner) command(ctx context.Context, text string) (int, error) {
	r.res.Steps++
	if text == "" {
		return -1, errors.New("empty command around || or &&")
	}
	expanded, err := r.expand(text)
	if err != nil {
		return -1, err
	}
	args := strings.Fields(expanded)
	name, args := args[0], args[1:]
	switch name {
	case "echo":
		r.env.Echo(strings.TrimSpace(strings.TrimPrefix(expanded, "echo")))
	case "set":
		if len(args) < 1 {
			return -1, errors.New("set: no setting named")
		}
		key, _, _ := strings.Cut(args[0], ":")
		r.vars[key] = strings.Join(args[1:], " ")
	case "clear":
		if len(args) != 1 {
			return -1, errors.New("clear: one setting")
		}
		key, _, _ := strings.Cut(args[0], ":")
		delete(r.vars, key)
	case "inc":
		return -1, r.inc(args)
	case "iseq":
		if len(args) != 2 {
			return -1, fmt.Errorf("iseq: want two values, got %d", len(args))
		}
		if args[0] != args[1] {
			return -1, failed("iseq: %q is not %q", args[0], args[1])
		}
	case "isset":
		if len(args) != 1 || args[0] == "" {
			return -1, failed("isset: not set")
		}
	case "goto":
		if len(args) != 1 {
			return -1, errors.New("goto: one label")
		}
		pc, ok := r.labels[args[0]]
		if !ok {
			return -1, fmt.Errorf("goto: no label %q", args[0])
		}
		return pc, nil
	case "sleep":
		if len(args) != 1 {
			return -1, errors.New("sleep: one number of seconds")
		}
		s, err := strconv.Atoi(args[0])
		if err != nil || s < 0 {
			return -1, fmt.Errorf("sleep: %q is not a number of seconds", args[0])
		}
		if err := r.env.Sleep(ctx, time.Duration(s)*time.Second); err != nil {
			return -1, err
		}
	case "kernel", "initrd", "imgfetch", "module", "chain":
		return -1, r.fetch(ctx, name, args)
	case "boot":
		if r.res.Kernel.URL == "" {
			return -1, failed("boot: no kernel loaded")
		}
		r.res.End = Boot
	case "reboot":
		r.res.End = Reboot
	case "exit":
		r.res.End = Exit
	default:
		return -1, fmt.Errorf("command %q is not one the storm can run", name)
	}
	return -1, nil
}

func (r *runner) inc(args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return errors.New("inc: a setting and an optional increment")
	}
	key, _, _ := strings.Cut(args[0], ":")
	v, err := strconv.ParseInt(orZero(r.vars[key]), 10, 64)
	if err != nil {
		return fmt.Errorf("inc: %s=%q is not a number", key, r.vars[key])
	}
	by := int64(1)
	if len(args) == 2 {
		if by, err = strconv.ParseInt(args[1], 10, 64); err != nil {
			return fmt.Errorf("inc: increment %q is not a number", args[1])
		}
	}
	r.vars[key] = strconv.FormatInt(v+by, 10)
	return nil
}

func orZero(s string) string {
	if s == "" {
		return "0"
	}
	return s
}

// fetch runs kernel, initrd, imgfetch, module and chain: options first,
// then the URL, then (kernel, chain) the command line.
func (r *runner) fetch(ctx context.Context, cmd string, args []string) error {
	img := Image{Kind: KindInitrd}
	switch cmd {
	case "kernel":
		img.Kind = KindKernel
	case "chain":
		img.Kind = KindChain
	}
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		opt := args[0]
		args = args[1:]
		switch {
		case opt == "--name" || opt == "-n":
			if len(args) == 0 {
				return fmt.Errorf("%s: %s without a name", cmd, opt)
			}
			img.Name, args = args[0], args[1:]
		case strings.HasPrefix(opt, "--name="):
			img.Name = strings.TrimPrefix(opt, "--name=")
		case opt == "--autofree" || opt == "-a" || opt == "--replace" || opt == "-r":
		default:
			return fmt.Errorf("%s: option %q is not one the storm knows", cmd, opt)
		}
	}
	if len(args) == 0 {
		return fmt.Errorf("%s: no URL", cmd)
	}
	img.URL = args[0]
	u, err := url.Parse(img.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return failed("%s: %q is not an http(s) URL", cmd, img.URL)
	}
	if img.Name == "" {
		img.Name = path.Base(u.Path)
	}
	if img.Kind != KindInitrd {
		img.Args = strings.Join(args[1:], " ")
	}
	if err := r.env.Fetch(ctx, img); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errFailed{fmt.Errorf("%s %s: %w", cmd, img.URL, err)}
	}
	switch img.Kind {
	case KindKernel:
		// A new kernel starts a new set of images, as iPXE's imgfree
		// with --replace would; ramboot scripts load the kernel first.
		r.res.Kernel, r.res.Initrds = img, nil
	case KindChain:
		r.res.Chained = &img
		r.res.End = Boot
	default:
		r.res.Initrds = append(r.res.Initrds, img)
	}
	return nil
}

// Check parses script without running it: its first line, its labels and
// that every goto names one of them.
func Check(script []byte) error {
	lines, labels, err := parse(script)
	if err != nil {
		return err
	}
	for _, l := range lines {
		cmds, _ := splitOps(l.text)
		for _, c := range cmds {
			f := strings.Fields(c)
			if len(f) == 2 && f[0] == "goto" {
				if _, ok := labels[f[1]]; !ok {
					return fmt.Errorf("script line %d: goto: no label %q", l.num, f[1])
				}
			}
		}
	}
	return nil
}
