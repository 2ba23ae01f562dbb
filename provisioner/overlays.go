package provisioner

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/accounts"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/bootserver"
	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/hostlist"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

// HostKeysDir holds the nodes' SSH host keys, in the state directory.
const HostKeysDir = "ssh-host-keys"

// overlays renders nodes' overlays with provisioner/overlayrender, as
// docs/overlays.md's "How the head calls them" says: one Renderer per
// configuration (and set of profiles), one Snapshot per inventory
// revision, whose shared part (/etc/hosts, known_hosts, authorized_keys)
// is archived and compressed once; each boot renders and compresses only
// the node's own files.
type overlays struct {
	db     *state.DB
	nodes  *Nodes
	images *images.Store
	log    *slog.Logger

	setup atomic.Pointer[overlaySetup] // replaced whole on reload

	mu   sync.Mutex // builds one snapshot at a time
	snap atomic.Pointer[overlaySnap]

	scans sync.Map // manifest digest -> *imageScan

	// keys, when set, gives the host key store every setup uses in
	// place of the state directory's (several heads on one etcd: the
	// keys are shared, state.DB.SharedHostKeys).
	keys func(local hostkeys.Store) hostkeys.Store
}

// overlaySetup is what a configuration says about overlays.
type overlaySetup struct {
	gen       int64
	cfg       config.Config
	head      overlayrender.Head
	authKeys  []byte
	accounts  *accounts.Set
	hostKeys  hostkeys.Store
	renderer  *overlayrender.Renderer
	profiles  []string         // the profiles whose trees the renderer holds
	broken    map[string]error // profiles whose template tree does not load
	setupErrs error            // accounts or keys that could not be read
}

// overlaySnap is a prepared cluster.
type overlaySnap struct {
	gen    int64 // the setup it was made with
	invRev int64 // the inventory revision it was made from
	snap   *overlayrender.Snapshot
	digest map[string]string // node -> image digest it was made with
	shared []byte            // zstd(newc(snap.Shared()))

	sharedGzOnce sync.Once // gzip nodes are rare: made at the first
	sharedGz     []byte    // gzip(newc(snap.Shared()))
	sharedGzErr  error
}

// sharedFor returns the shared entries compressed with c.
func (sn *overlaySnap) sharedFor(c bootserver.Compression) ([]byte, error) {
	if c != bootserver.Gzip {
		return sn.shared, nil
	}
	sn.sharedGzOnce.Do(func() { sn.sharedGz, sn.sharedGzErr = entries(sn.snap.Shared(), c) })
	return sn.sharedGz, sn.sharedGzErr
}

// imageScan is what ScanImage found in one image, computed once.
type imageScan struct {
	once     sync.Once
	accounts *accounts.Files
	dirs     map[string]overlayrender.Attr
	err      error
}

var setupGen atomic.Int64

// newOverlaySetup reads what cfg's overlay settings name (accounts,
// authorized keys) and loads the template trees of the profiles in inv.
func newOverlaySetup(cfg config.Config, head overlayrender.Head, profiles []string, log *slog.Logger) *overlaySetup {
	s := &overlaySetup{gen: setupGen.Add(1), cfg: cfg, head: head, broken: map[string]error{}}
	var errs []error
	if p := cfg.Overlay.AuthorizedKeys; p != "" {
		b, err := os.ReadFile(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			errs = append(errs, fmt.Errorf("overlay.authorized_keys: %w", err))
		default:
			s.authKeys = b
		}
	}
	if a := cfg.Overlay.Accounts; a.Selected() {
		set, err := selectAccounts(a)
		if err != nil {
			errs = append(errs, err)
		}
		s.accounts = set
	}
	if cfg.Overlay.HostKeys {
		s.hostKeys = &hostkeys.Dir{Path: filepath.Join(cfg.StateDir, HostKeysDir)}
	}
	s.setupErrs = errors.Join(errs...)
	s.loadTrees(profiles, log)
	return s
}

// selectAccounts selects the head's accounts as configured.
func selectAccounts(a config.Accounts) (*accounts.Set, error) {
	head, err := accounts.ReadFiles(os.DirFS("/"))
	if err != nil {
		return nil, fmt.Errorf("overlay.accounts: read the head's accounts: %w", err)
	}
	sel := accounts.Selection{Users: a.Users, Groups: a.Groups}
	for _, r := range a.UIDs {
		ir, err := accounts.ParseIDRange(r)
		if err != nil {
			return nil, fmt.Errorf("overlay.accounts.uids: %w", err)
		}
		sel.UIDs = append(sel.UIDs, ir)
	}
	for _, r := range a.GIDs {
		ir, err := accounts.ParseIDRange(r)
		if err != nil {
			return nil, fmt.Errorf("overlay.accounts.gids: %w", err)
		}
		sel.GIDs = append(sel.GIDs, ir)
	}
	set, err := accounts.Select(head, sel)
	if err != nil {
		return nil, fmt.Errorf("overlay.accounts: %w", err)
	}
	return set, nil
}

// loadTrees makes the renderer from the template trees of profiles that
// have one. A tree that does not load fails only the nodes of that
// profile (their overlay names the error); the others render.
func (s *overlaySetup) loadTrees(profiles []string, log *slog.Logger) {
	trees := map[string]fs.FS{}
	if dir := s.cfg.Overlay.Templates; dir != "" {
		for _, p := range profiles {
			if fi, err := os.Stat(filepath.Join(dir, p)); err == nil && fi.IsDir() {
				trees[p] = os.DirFS(filepath.Join(dir, p))
			}
		}
	}
	rc := overlayrender.Config{HostKeys: s.hostKeys, NoKnownHosts: !s.cfg.Overlay.KnownHosts, Accounts: s.accounts, Logger: log}
	rc.Profiles = trees
	r, err := overlayrender.New(rc)
	if err != nil {
		// Find the trees that fail on their own, and leave them out.
		for name, t := range trees {
			one := rc
			one.Profiles = map[string]fs.FS{name: t}
			if _, err := overlayrender.New(one); err != nil {
				s.broken[name] = err
				delete(trees, name)
			}
		}
		rc.Profiles = trees
		if r, err = overlayrender.New(rc); err != nil {
			s.setupErrs = errors.Join(s.setupErrs, err)
			rc.Profiles = nil
			r, _ = overlayrender.New(rc)
		}
	}
	s.renderer = r
	s.profiles = slices.Sorted(maps.Keys(trees))
	for name := range s.broken {
		s.profiles = append(s.profiles, name)
	}
	slices.Sort(s.profiles)
}

// Check reports every problem of the overlay configuration at once: for
// `ramboot serve` to refuse to start on templates that do not parse.
func (s *overlaySetup) Check() error {
	var errs []error
	errs = append(errs, s.setupErrs)
	for _, name := range slices.Sorted(maps.Keys(s.broken)) {
		errs = append(errs, fmt.Errorf("%soverlay.templates: profile %s: %w", s.cfg.Line("overlay.templates"), name, s.broken[name]))
	}
	return errors.Join(errs...)
}

// setSetup installs a new setup (start, reload).
func (o *overlays) setSetup(s *overlaySetup) {
	if o.keys != nil && s.hostKeys != nil {
		s.hostKeys = o.keys(s.hostKeys)
	}
	o.setup.Store(s)
	o.snap.Store(nil)
}

// profilesWithTrees lists the inventory's profiles.
func (o *overlays) profileNames() []string {
	return slices.Sorted(maps.Keys(o.db.Profiles()))
}

// current returns the setup, rebuilt when the inventory's profiles are not
// the ones its renderer was made for (a profile was added).
func (o *overlays) current() *overlaySetup {
	s := o.setup.Load()
	names := o.profileNames()
	if dir := s.cfg.Overlay.Templates; dir != "" {
		var want []string
		for _, p := range names {
			if fi, err := os.Stat(filepath.Join(dir, p)); err == nil && fi.IsDir() {
				want = append(want, p)
			}
		}
		if !slices.Equal(want, s.profiles) {
			ns := &overlaySetup{gen: setupGen.Add(1), cfg: s.cfg, head: s.head, authKeys: s.authKeys, accounts: s.accounts,
				hostKeys: s.hostKeys, broken: map[string]error{}, setupErrs: s.setupErrs}
			ns.loadTrees(want, o.log)
			if o.setup.CompareAndSwap(s, ns) {
				o.snap.Store(nil)
			}
			return o.setup.Load()
		}
	}
	return s
}

// imageOf returns a node's image as the renderer takes it: the digest of
// its plan (its pin, or what its reference resolves to now), and what the
// image holds (accounts, directory modes), scanned once per image; and
// its manifest, nil when the image cannot be read.
func (o *overlays) imageOf(p plan.Plan, resolved map[string]images.Digest) (overlayrender.Image, *images.Manifest) {
	img := overlayrender.Image{Name: p.Image, Digest: p.Digest}
	if img.Digest == "" {
		d, ok := resolved[p.Image]
		if !ok {
			if _, rd, err := o.images.Resolve(p.Image); err == nil {
				d = rd
			}
			resolved[p.Image] = d
		}
		img.Digest = string(d)
	}
	d, err := images.ParseDigest(img.Digest)
	if err != nil {
		return img, nil
	}
	m, err := o.images.ReadManifest(d)
	if err != nil {
		return img, nil
	}
	img.ContentDigest = string(m.ContentDigest)
	v, _ := o.scans.LoadOrStore(img.Digest, &imageScan{})
	sc := v.(*imageScan)
	sc.once.Do(func() { sc.accounts, sc.dirs, sc.err = o.scan(m) })
	if sc.err == nil {
		img.Accounts, img.Dirs = sc.accounts, sc.dirs
	} else {
		o.log.Warn("cannot read the image's accounts and directories; overlays use defaults", "image", p.Image, "err", sc.err)
	}
	return img, &m
}

// scan reads an image's root archive for its accounts and directories.
func (o *overlays) scan(m images.Manifest) (*accounts.Files, map[string]overlayrender.Attr, error) {
	f, err := o.images.OpenBlob(m.Rootfs.Digest)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var r io.Reader
	if m.Rootfs.MediaType == images.MediaTypeRootfsGzip {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, nil, err
		}
		defer zr.Close()
		r = zr
	} else {
		zr, err := zstd.NewReader(f)
		if err != nil {
			return nil, nil, err
		}
		defer zr.Close()
		r = zr
	}
	return overlayrender.ScanImage(r)
}

// snapshot returns the prepared cluster for the current inventory,
// preparing it again when the inventory or the setup changed.
func (o *overlays) snapshot(ctx context.Context) (*overlaySnap, *overlaySetup, error) {
	s := o.current()
	rev := o.db.InventoryRev()
	if sn := o.snap.Load(); sn != nil && sn.gen == s.gen && sn.invRev == rev {
		return sn, s, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if sn := o.snap.Load(); sn != nil && sn.gen == s.gen && sn.invRev == rev {
		return sn, s, nil
	}
	sn, err := o.prepare(ctx, s, rev)
	if err != nil {
		return nil, s, err
	}
	o.snap.Store(sn)
	return sn, s, nil
}

// prepare builds the cluster from every node's plan and prepares it.
func (o *overlays) prepare(ctx context.Context, s *overlaySetup, rev int64) (*overlaySnap, error) {
	list := o.db.List()
	c := &overlayrender.Cluster{Name: s.cfg.Cluster.Name, Domain: s.cfg.Cluster.Domain, Head: s.head, AuthorizedKeys: s.authKeys}
	if len(s.cfg.Cluster.Values) > 0 {
		c.Values = map[string]any{}
		for k, v := range s.cfg.Cluster.Values {
			c.Values[k] = v
		}
	}
	sn := &overlaySnap{gen: s.gen, invRev: rev, digest: map[string]string{}}
	resolved := map[string]images.Digest{}
	slices.SortFunc(list, func(a, b state.NodeStatus) int { return hostlist.Natural(a.Name, b.Name) })
	for _, n := range list {
		p, err := o.nodes.resolve(n)
		if err != nil {
			continue // a node without a plan has no overlay either
		}
		rn := renderNode(p)
		var m *images.Manifest
		rn.Image, m = o.imageOf(p, resolved)
		if m != nil {
			// The compressed mode falls back to tmpfs as the script does.
			rn.Root, _ = bootserver.RootFor(p, *m)
		}
		sn.digest[n.Name] = rn.Image.Digest
		c.Nodes = append(c.Nodes, rn)
	}
	snap, err := s.renderer.Prepare(ctx, c)
	if err != nil {
		return nil, err
	}
	sn.snap = snap
	shared, err := entries(snap.Shared(), bootserver.Zstd)
	if err != nil {
		return nil, err
	}
	sn.shared = shared
	return sn, nil
}

// renderNode returns a plan as the renderer takes it.
func renderNode(p plan.Plan) overlayrender.Node {
	n := overlayrender.Node{Name: p.Node, Profiles: p.Profiles, Tags: p.Tags, Modules: p.Modules, Network: overlayrender.NetworkStack(p.Network),
		Root: overlay.Root{Mode: overlay.RootMode(p.Root.Mode), Size: p.Root.Size}, ConsoleShell: p.ConsoleShell}
	if p.Hostname != p.Node {
		n.Hostname = p.Hostname
	}
	if len(p.Values) > 0 {
		n.Values = map[string]any{}
		for k, v := range p.Values {
			n.Values[k] = v
		}
	}
	for _, ifc := range p.Interfaces {
		n.Interfaces = append(n.Interfaces, overlayrender.Interface{Name: ifc.Name, MAC: ifc.MAC, Address: ifc.Address, Gateway: ifc.Gateway, DNS: ifc.DNS, MTU: ifc.MTU})
	}
	return n
}

// archive returns c(newc(files)): a whole archive, with its trailer.
func archive(files []overlayrender.File, c bootserver.Compression) ([]byte, error) {
	o := overlayrender.Overlay{Files: files}
	var raw bytes.Buffer
	if err := newc.WriteFiles(&raw, o.NewcFiles()); err != nil {
		return nil, err
	}
	return bootserver.Compress(raw.Bytes(), c)
}

// entries returns c of files' newc entries without the trailer: the
// first part of an archive that archive() of the rest completes. The
// two zstd frames (or gzip members) decompress to one newc archive, which
// the kernel (one frame at a time, each ending on an entry's boundary) and
// any cpio reader unpack as one.
func entries(files []overlayrender.File, c bootserver.Compression) ([]byte, error) {
	o := overlayrender.Overlay{Files: files}
	var raw bytes.Buffer
	w := newc.NewWriter(&raw)
	for _, f := range o.NewcFiles() {
		if err := w.WriteFile(f); err != nil {
			return nil, err
		}
	}
	return bootserver.Compress(raw.Bytes(), c)
}

// render renders node's overlay for one boot.
func (o *overlays) render(ctx context.Context, node, token string) (*overlayrender.Overlay, *overlaySnap, error) {
	for range 2 {
		sn, s, err := o.snapshot(ctx)
		if err != nil {
			return nil, nil, err
		}
		p, err := o.nodes.Plan(node)
		if err != nil {
			return nil, nil, err
		}
		for _, prof := range p.Profiles {
			if err := s.broken[prof]; err != nil {
				return nil, nil, fmt.Errorf("render overlay of %s: profile %s: %w", node, prof, err)
			}
		}
		// The node was pinned to another digest since the snapshot (its
		// script moved it): prepare again, once.
		if p.Digest != "" && sn.digest[node] != p.Digest {
			o.snap.CompareAndSwap(sn, nil)
			continue
		}
		ov, err := sn.snap.Render(ctx, node, token)
		return ov, sn, err
	}
	return nil, nil, fmt.Errorf("render overlay of %s: the cluster changed while it was prepared", node)
}

// Overlay implements bootserver.Overlays: the node's overlay archive for
// one boot, compressed with c: the shared entries (compressed once per
// snapshot) then its own entries and the trailer, two zstd frames (or
// gzip members) of one newc archive, in two parts the server sends one
// after the other.
func (o *overlays) Overlay(ctx context.Context, node, token string, c bootserver.Compression) ([][]byte, error) {
	ov, sn, err := o.render(ctx, node, token)
	if err != nil {
		return nil, err
	}
	own, withShared := ov.Own()
	if !withShared {
		a, err := archive(ov.Files, c)
		return [][]byte{a}, err
	}
	shared, err := sn.sharedFor(c)
	if err != nil {
		return nil, err
	}
	ownZ, err := archive(own, c)
	if err != nil {
		return nil, err
	}
	// The shared part is the snapshot's, sent as it is: copying it for
	// each node (a megabyte in a large cluster) held a gigabyte during a
	// storm of a thousand overlays.
	return [][]byte{shared, ownZ}, nil
}

// RuntimeOverlay implements bootserver.Overlays and api.OverlaySource:
// the node's overlay as the head renders it now, for its agent daemon to
// apply to the running node: the configuration without a token, and every
// other file.
func (o *overlays) RuntimeOverlay(node string) (overlay.RuntimeOverlay, error) {
	ov, _, err := o.render(context.Background(), node, "(runtime)")
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	c := ov.Config
	c.Token = ""
	return overlay.RuntimeOverlay{Generation: c.OverlayGeneration, Config: c, Files: ov.RuntimeFiles()}, nil
}

// Render implements api.Admin.Render: the overlay the node's next boot
// gets, with a placeholder token.
func (o *overlays) Render(node, path string) (api.OverlayResult, error) {
	if _, err := o.db.Get(node); err != nil {
		return api.OverlayResult{}, err
	}
	ov, _, err := o.render(context.Background(), node, "(the boot's token)")
	if err != nil {
		return api.OverlayResult{}, fmt.Errorf("%w: %w", errRender, err)
	}
	res := api.OverlayResult{Node: node, Files: make([]api.OverlayFile, 0, len(ov.Files))}
	for _, f := range ov.Files {
		res.Files = append(res.Files, api.OverlayFile{Path: f.Path, Mode: f.Mode.String(), UID: f.UID, GID: f.GID, Size: len(f.Data), Link: f.Linkname, Source: f.Source})
	}
	if path != "" {
		f := ov.File(strings.TrimPrefix(path, "/"))
		if f == nil || f.Mode.IsDir() {
			return api.OverlayResult{}, fmt.Errorf("overlay of %s has no file %s: %w", node, path, state.ErrNotFound)
		}
		c := string(f.Data)
		res.Content = &c
	}
	return res, nil
}

// errRender marks a render that failed (a template), a 400 for the API.
var errRender = api.ErrInvalid

// prepareLoop prepares the snapshot soon after every inventory change or
// reload, so that the first boot after adding a rack does not wait for
// its nodes' host keys to be made: checked every interval.
func (o *overlays) prepareLoop(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s := o.setup.Load()
		if sn := o.snap.Load(); sn != nil && sn.gen == s.gen && sn.invRev == o.db.InventoryRev() {
			continue
		}
		start := time.Now()
		if sn, _, err := o.snapshot(ctx); err != nil {
			o.log.Warn("prepare overlays", "err", err)
		} else {
			o.log.Debug("overlays prepared", "nodes", len(sn.digest), "dur", time.Since(start))
		}
	}
}
