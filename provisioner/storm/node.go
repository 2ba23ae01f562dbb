package storm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/storm/internal/ipxescript"
	"github.com/ramboot/ramboot/provisioner/storm/internal/tftpc"
)

// errReboot ends a boot whose script rebooted the node.
var errReboot = errors.New("the script rebooted the node")

// PhaseError is a phase's failure, with a short reason for the report's
// counts ("discover-timeout", "http-503", "digest").
type PhaseError struct {
	Phase  Phase
	Reason string
	Err    error
}

func (e *PhaseError) Error() string { return fmt.Sprintf("%s: %s: %v", e.Phase, e.Reason, e.Err) }
func (e *PhaseError) Unwrap() error { return e.Err }

func phaseErr(ph Phase, reason string, err error) error {
	return &PhaseError{Phase: ph, Reason: reason, Err: err}
}

// span is when a phase ran, from the storm's start: from its first
// attempt to its success.
type span struct {
	start, end time.Duration
	started    bool
	ok         bool
}

// nodeRun is one simulated node and what happened to it. Only its own
// goroutine writes it until the storm ends.
type nodeRun struct {
	spec    NodeSpec
	index   int // from 1
	uuid    [16]byte
	powerOn time.Duration // when it was powered on (since the storm's start)
	phases  [numPhases]span
	counted [numPhases]bool // in the progress counts
	bytes   [numPhases]int64
	retries map[string]int // "phase reason" -> count
	reboots int
	head    string // the head whose DHCP answered
	done    bool
	ended   time.Duration // when it finished or was lost
	failure *PhaseError   // why it was lost
	lastErr *PhaseError   // the last retried failure
	files   []fetched     // kernel and image, for the comparisons
	start   time.Time     // the storm's start
}

// fetched is a file a node downloaded.
type fetched struct {
	phase  Phase
	url    string
	digest string // "sha256:<hex>", from the ETag
	size   int64
}

func (n *nodeRun) since() time.Duration { return time.Since(n.start) }

func (n *nodeRun) retry(ph Phase, reason string, count int) {
	if count <= 0 {
		return
	}
	if n.retries == nil {
		n.retries = map[string]int{}
	}
	n.retries[ph.String()+" "+reason] += count
}

// begin marks ph started, if it was not.
func (n *nodeRun) begin(ph Phase) {
	if !n.phases[ph].started {
		n.phases[ph] = span{start: n.since(), started: true}
	}
}

// end marks ph done.
func (n *nodeRun) end(r *runner, ph Phase) {
	s := &n.phases[ph]
	if !s.started {
		s.start, s.started = n.since(), true
	}
	s.end, s.ok = n.since(), true
	if !n.counted[ph] { // a phase done again after a reboot counts once
		n.counted[ph] = true
		r.doneCount[ph].Add(1)
	}
}

// run boots node n, starting over from its firmware when a boot attempt
// fails before the kernel (DHCP or TFTP given up, iPXE without a script:
// the firmware's boot manager tries the network again) or when its script
// reboots it, until it has finished or is lost.
func (r *runner) run(ctx context.Context, n *nodeRun) {
	for {
		err := r.boot(ctx, n)
		if err == nil {
			n.done, n.ended = true, n.since()
			return
		}
		var pe *PhaseError
		if errors.As(err, &pe) && (errors.Is(err, errReboot) || pe.Phase <= PhaseScript) && n.reboots < r.cfg.MaxReboots {
			n.reboots++
			n.retry(pe.Phase, "reboot", 1)
			n.lastErr = pe
			n.phases = [numPhases]span{} // a new boot: phases are timed again
			if err := sleep(ctx, r.cfg.RebootTime); err != nil {
				n.failure, n.ended = &PhaseError{Phase: pe.Phase, Reason: "deadline", Err: fmt.Errorf("rebooting after %w", pe)}, n.since()
				r.failed.Add(1)
				return
			}
			continue
		}
		if !errors.As(err, &pe) {
			reason := "error"
			switch {
			case errors.Is(ctx.Err(), context.DeadlineExceeded):
				reason = "deadline"
			case ctx.Err() != nil:
				reason = "interrupted"
			}
			pe = &PhaseError{Phase: n.current(), Reason: reason, Err: err}
			if n.lastErr != nil && reason == "deadline" {
				pe.Err = fmt.Errorf("%w; last failure: %v", err, n.lastErr)
			}
		}
		n.failure, n.ended = pe, n.since()
		r.failed.Add(1)
		r.log.Debug("node lost", "node", n.spec.Name, "ip", n.spec.IP, "phase", pe.Phase, "reason", pe.Reason, "err", pe.Err)
		return
	}
}

// current is the phase the node is in: the first one not done.
func (n *nodeRun) current() Phase {
	for p := PhaseDHCP; p < numPhases; p++ {
		if !n.phases[p].ok {
			return p
		}
	}
	return PhaseRegister
}

// boot runs one boot, from power-on (or reboot) to the last phase.
func (r *runner) boot(ctx context.Context, n *nodeRun) error {
	until := r.cfg.Until
	if r.cfg.Firmware != FirmwareIPXE {
		n.begin(PhaseDHCP)
		fw, err := r.dora(ctx, n, asFirmware, PhaseDHCP)
		if err != nil {
			return err
		}
		n.end(r, PhaseDHCP)
		r.learn(func(l *learned) { l.tftp = netip.AddrPortFrom(fw.next, 69); l.tftpFile = fw.bootFile })
		if until == PhaseDHCP {
			return nil
		}
		if err := r.tftp(ctx, n, fw); err != nil {
			return err
		}
		if until == PhaseTFTP {
			return nil
		}
	}
	n.begin(PhaseIPXEDHCP)
	l, err := r.dora(ctx, n, asIPXE, PhaseIPXEDHCP)
	if err != nil {
		return err
	}
	n.end(r, PhaseIPXEDHCP)
	if until == PhaseIPXEDHCP {
		return nil
	}

	hc := newNodeHTTP(n.spec.IP, r.cfg.HTTPStall)
	defer hc.Close()
	n.begin(PhaseScript)
	script, err := r.getScript(ctx, n, hc, l.bootFile)
	if err != nil {
		return err
	}
	n.end(r, PhaseScript)
	if until == PhaseScript {
		if err := ipxescript.Check(script); err != nil {
			return phaseErr(PhaseScript, "syntax", err)
		}
		return nil
	}
	env := &nodeEnv{r: r, n: n, hc: hc}
	res, err := ipxescript.Run(ctx, script, env)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return phaseErr(n.current(), "script", err)
	}
	switch res.End {
	case ipxescript.Boot:
	case ipxescript.Reboot:
		ph, reason := n.current(), "reboot"
		if env.lastErr != nil {
			ph, reason = env.lastErr.Phase, env.lastErr.Reason
		}
		return &PhaseError{Phase: ph, Reason: reason, Err: fmt.Errorf("%w after %v", errReboot, env.lastErr)}
	default:
		return phaseErr(n.current(), "script", fmt.Errorf("the script ended with %v without booting", res.End))
	}
	if until < PhaseRegister {
		return nil
	}
	if env.overlay == nil {
		return phaseErr(PhaseOverlay, "missing", errors.New("the script loaded no overlay.cpio.zst"))
	}
	cfg, err := readOverlay(env.overlay)
	if err != nil {
		return phaseErr(PhaseRegister, "overlay", err)
	}
	if err := sleep(ctx, r.cfg.BootTime); err != nil {
		return err
	}
	n.begin(PhaseRegister)
	if err := r.register(ctx, n, cfg); err != nil {
		return err
	}
	n.end(r, PhaseRegister)
	return nil
}

// tftp fetches the boot file the firmware was given, probing its size
// first as UEFI firmware does.
func (r *runner) tftp(ctx context.Context, n *nodeRun, fw lease) error {
	n.begin(PhaseTFTP)
	c := &tftpc.Client{Local: n.spec.IP, BlockSize: r.cfg.TFTPBlockSize, Timeout: r.cfg.TFTPTimeout, Retries: r.cfg.TFTPRetries}
	server := netip.AddrPortFrom(fw.next, 69)
	if !fw.next.IsValid() || fw.next.IsUnspecified() {
		server = netip.AddrPortFrom(fw.server, 69)
	}
	size := int64(-1)
	if r.cfg.Firmware == FirmwareUEFI {
		s, st, err := c.Probe(ctx, server, fw.bootFile)
		n.retry(PhaseTFTP, "retransmit", st.Retransmits)
		if err != nil {
			return tftpErr(ctx, err)
		}
		size = s
	}
	st, err := c.Get(ctx, server, fw.bootFile, io.Discard)
	n.retry(PhaseTFTP, "retransmit", st.Retransmits)
	if err != nil {
		return tftpErr(ctx, err)
	}
	if size >= 0 && st.Bytes != size {
		return phaseErr(PhaseTFTP, "size", fmt.Errorf("%s: %d bytes, the probe said %d", fw.bootFile, st.Bytes, size))
	}
	n.bytes[PhaseTFTP] += st.Bytes
	n.end(r, PhaseTFTP)
	return nil
}

func tftpErr(ctx context.Context, err error) error {
	var se *tftpc.ServerError
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, tftpc.ErrTimeout):
		return phaseErr(PhaseTFTP, "timeout", err)
	case errors.As(err, &se):
		return phaseErr(PhaseTFTP, fmt.Sprintf("error-%d", se.Code), err)
	}
	return phaseErr(PhaseTFTP, "error", err)
}

// getScript fetches the iPXE script, retrying as iPXE's autoboot would
// not (it would fail the boot; the firmware then retries from DHCP): a
// failure here is a reboot.
func (r *runner) getScript(ctx context.Context, n *nodeRun, hc *nodeHTTP, url string) ([]byte, error) {
	var body []byte
	_, err := hc.get(ctx, &r.bufs, url, getOpts{keep: func(b []byte) { body = append(body, b...) }, limit: 1 << 20})
	if err != nil {
		var pe *PhaseError
		if errors.As(err, &pe) {
			pe.Phase = PhaseScript
			pe.Err = fmt.Errorf("%w: %w", errReboot, pe.Err)
			return nil, pe
		}
		return nil, err
	}
	n.bytes[PhaseScript] += int64(len(body))
	r.learn(func(l *learned) { l.headURL = baseOf(url) })
	return body, nil
}

// nodeEnv runs a node's script: each fetch is a phase by the file's name.
type nodeEnv struct {
	r       *runner
	n       *nodeRun
	hc      *nodeHTTP
	overlay []byte
	lastErr *PhaseError
}

// phaseOf names the phase of a file the script fetches.
func phaseOf(img ipxescript.Image) Phase {
	if img.Kind == ipxescript.KindKernel {
		return PhaseKernel
	}
	switch img.Name {
	case "rootfs.cpio.zst", "rootfs.cpio.gz":
		return PhaseImage
	case "agent.cpio.zst":
		return PhaseAgent
	case "overlay.cpio.zst":
		return PhaseOverlay
	}
	return PhaseImage
}

// Fetch downloads one file of the script, unless its phase is past
// Config.Until (then it is taken as fetched).
func (e *nodeEnv) Fetch(ctx context.Context, img ipxescript.Image) error {
	r, n := e.r, e.n
	ph := phaseOf(img)
	if ph > r.cfg.Until {
		return nil
	}
	n.begin(ph)
	big := ph == PhaseKernel || ph == PhaseImage
	if big && r.downloads != nil {
		select {
		case r.downloads <- struct{}{}:
			defer func() { <-r.downloads }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// The kernel, image and agent archive are one shared copy each: every
	// Nth node checks them. The overlay is the node's own, and read.
	verify := ph == PhaseOverlay || (r.cfg.DigestEvery > 0 && n.index%r.cfg.DigestEvery == 0)
	o := getOpts{verify: verify}
	if ph == PhaseOverlay {
		e.overlay = e.overlay[:0]
		o.keep = func(b []byte) { e.overlay = append(e.overlay, b...) }
	}
	res, err := e.hc.get(ctx, &r.bufs, img.URL, o)
	if err != nil {
		var pe *PhaseError
		if errors.As(err, &pe) {
			pe.Phase = ph
			e.lastErr = pe
			n.retry(ph, pe.Reason, 1)
		}
		return err
	}
	n.bytes[ph] += res.size
	if big {
		n.files = append(n.files, fetched{phase: ph, url: img.URL, digest: res.etagDigest, size: res.size})
		r.learn(func(l *learned) {
			if ph == PhaseImage {
				l.imageURL = img.URL
			}
		})
	}
	n.end(r, ph)
	return nil
}

// Sleep waits as the script says.
func (e *nodeEnv) Sleep(ctx context.Context, d time.Duration) error { return sleep(ctx, d) }

// Echo drops the script's console output.
func (e *nodeEnv) Echo(string) {}

// getResult is a finished download.
type getResult struct {
	size       int64
	etagDigest string // "sha256:<hex>" when the ETag is one
}

// getOpts say how to check and keep a download.
type getOpts struct {
	// verify checks the body's sha256 against want, or against the ETag
	// when want is empty and the ETag is a digest.
	verify bool
	want   string
	// keep, if set, gets the body's bytes; limit > 0 bounds them.
	keep  func([]byte)
	limit int64
}

// etagDigest returns the sha256 digest an ETag names ("sha256:<64 hex>"),
// or "".
func etagDigest(etag string) string {
	if len(etag) >= 2 && etag[0] == '"' && etag[len(etag)-1] == '"' {
		etag = etag[1 : len(etag)-1]
	}
	const p = "sha256:"
	if len(etag) != len(p)+64 || etag[:len(p)] != p {
		return ""
	}
	for _, c := range etag[len(p):] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return ""
		}
	}
	return etag
}

func httpErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	reason := "connection"
	var se stallError
	if errors.As(err, &se) {
		reason = "stall"
	}
	return phaseErr(PhaseScript, reason, err)
}

// baseOf returns the scheme and host of a URL.
func baseOf(u string) string {
	for i := len("http://"); i < len(u); i++ {
		if u[i] == '/' {
			return u[:i]
		}
	}
	return u
}

// readOverlay finds the node configuration in an overlay archive.
func readOverlay(b []byte) (overlay.Config, error) {
	data, err := overlayFile(b, overlay.ConfigPath)
	if err != nil {
		return overlay.Config{}, err
	}
	cfg, err := overlay.ParseConfig(data)
	if err != nil {
		return overlay.Config{}, fmt.Errorf("overlay %s: %w", path.Base(overlay.ConfigPath), err)
	}
	return cfg, nil
}
