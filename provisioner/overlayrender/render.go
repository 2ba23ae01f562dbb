package overlayrender

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/accounts"
	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"golang.org/x/crypto/ssh"
)

// Config configures a Renderer.
type Config struct {
	// Profiles are the template trees of the profiles, by profile name
	// (os.DirFS of a directory, or any fs.FS). A profile without one adds
	// no files.
	Profiles map[string]fs.FS
	// HostKeys keeps the nodes' SSH host keys; nil renders none (and no
	// known_hosts).
	HostKeys hostkeys.Store
	// KeyTypes are the key types generated for a node without keys; nil
	// means hostkeys.DefaultTypes.
	KeyTypes []hostkeys.Type
	// NoKnownHosts leaves etc/ssh/ssh_known_hosts out of the overlays
	// (about 250 bytes per node of the cluster in every overlay).
	NoKnownHosts bool
	// Accounts are the head's accounts merged into every node's
	// passwd, group, shadow and gshadow; nil merges none.
	Accounts *accounts.Set
	// Logger receives debug lines; nil discards them.
	Logger *slog.Logger
}

// Renderer renders node overlays. It holds the parsed template trees; make
// a new one when they change. It is safe for concurrent use.
type Renderer struct {
	cfg   Config
	trees map[string]*tree
	log   *slog.Logger

	mu   sync.Mutex
	keys map[string]*nodeKeys // host keys already loaded, by node
}

// nodeKeys are a node's host keys and their files, encoded once: OpenSSH's
// format has random check bytes, so encoding at every render would make
// every overlay different.
type nodeKeys struct {
	keys  hostkeys.Keys
	files [][2][]byte // private, public
	known [][]byte    // known_hosts key fields: "type base64\n"
}

// New loads and parses every profile's template tree, reporting every
// problem (with profile, file and line) at once.
func New(cfg Config) (*Renderer, error) {
	r := &Renderer{cfg: cfg, trees: map[string]*tree{}, log: cfg.Logger, keys: map[string]*nodeKeys{}}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(cfg.Profiles)) {
		t, err := loadTree(name, cfg.Profiles[name])
		errs = append(errs, err)
		r.trees[name] = t
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("load overlay templates: %w", err)
	}
	return r, nil
}

// Forget drops the renderer's copy of a node's host keys, after they were
// deleted from the store (rotation); the next Prepare reads or makes new
// ones.
func (r *Renderer) Forget(node string) {
	r.mu.Lock()
	delete(r.keys, node)
	r.mu.Unlock()
}

// File is one entry of a node's overlay.
type File struct {
	// Path is the path in the node's root, without a leading slash.
	Path string
	// Mode is the file's type and permissions, as fs.FileMode has them
	// (fs.ModeDir, fs.ModeSymlink, fs.ModeSetuid, ...).
	Mode fs.FileMode
	// UID and GID are the numeric owner and group on the node.
	UID, GID int
	// Data is a regular file's content. Content shared by every node
	// (/etc/hosts, known_hosts) is one slice: never modify it.
	Data []byte
	// Linkname is a symbolic link's target.
	Linkname string
	// Source says where the file came from: "built-in", "profile compute:
	// etc/motd.tmpl", "directory".
	Source string
}

// Overlay is a node's rendered overlay.
type Overlay struct {
	// Node is the node's name.
	Node string
	// Files are the overlay's files and directories, sorted by path (a
	// directory before its contents).
	Files []File
	// ModTime is every file's modification time.
	ModTime time.Time

	// Config is the agent's configuration etc/ramboot/node.json holds,
	// with its token and generation.
	Config overlay.Config

	shared     map[string]bool // paths of Files that are Snapshot.Shared's
	sharedGone bool            // a profile skipped a shared file
}

// Own returns the part of the overlay that is the node's own: every file
// but those of Snapshot.Shared, and every directory. withShared reports
// whether Shared followed by Own (later files win, as the kernel unpacks
// them) gives this overlay; it is false when a profile left a shared file
// out for this node, and then the head must serve Files whole.
func (o *Overlay) Own() (own []File, withShared bool) {
	own = make([]File, 0, len(o.Files)-len(o.shared))
	for _, f := range o.Files {
		if !o.shared[f.Path] {
			own = append(own, f)
		}
	}
	return own, !o.sharedGone
}

// File returns the overlay's file at path, or nil.
func (o *Overlay) File(p string) *File {
	i, ok := slices.BinarySearchFunc(o.Files, p, func(f File, p string) int { return strings.Compare(f.Path, p) })
	if !ok {
		return nil
	}
	return &o.Files[i]
}

// NewcFiles returns the overlay as newc archive entries, for
// newc.WriteFiles.
func (o *Overlay) NewcFiles() []newc.File {
	out := make([]newc.File, len(o.Files))
	for i, f := range o.Files {
		out[i] = newc.File{
			Name: f.Path, Mode: f.Mode, Data: f.Data, Linkname: f.Linkname,
			UID: f.UID, GID: f.GID, ModTime: o.ModTime,
		}
	}
	return out
}

// TemplateError is a template that failed for a node.
type TemplateError struct {
	// Node is the node being rendered.
	Node string
	// Profile and Path name the template: a profile's tree, the template's
	// path in it.
	Profile, Path string
	// Line is the template's line, when text/template said it (else 0).
	Line int
	// Err is text/template's error.
	Err error

	msg string // Err's message without text/template's location prefix
}

// Error says node, profile, file, line and what failed.
func (e *TemplateError) Error() string {
	where := e.Path
	if e.Line > 0 {
		where += ":" + strconv.Itoa(e.Line)
	}
	msg := e.msg
	if msg == "" {
		msg = e.Err.Error()
	}
	return fmt.Sprintf("render overlay of %s: profile %s: %s: %s", e.Node, e.Profile, where, msg)
}

// Unwrap returns text/template's error.
func (e *TemplateError) Unwrap() error { return e.Err }

// execLine finds the line in text/template's "template: NAME:LINE:COL: ..."
// message; it is for the operator's eyes only.
var execLine = regexp.MustCompile(`^template: [^:]*:(\d+)(?::\d+)?: `)

// Snapshot is a cluster prepared for rendering: the content every node
// shares is rendered once. Make a new one when the cluster changes. It is
// safe for concurrent use.
type Snapshot struct {
	r         *Renderer
	c         *Cluster
	byName    map[string]*Node
	shared    []File // hosts, known_hosts, authorized_keys
	sharedAll []File // shared and their directories, sorted
	keys      map[string]*nodeKeys

	mu       sync.Mutex
	accounts map[string]*imageAccounts // by image digest
}

// imageAccounts are an image's merged account files and its name lookups,
// computed once per image.
type imageAccounts struct {
	once  sync.Once
	files []File
	ids   accounts.IDs
	known bool // ids come from the image
	err   error
}

// Prepare checks the cluster, loads (or makes and stores) every node's
// host keys, and renders what every node shares: /etc/hosts,
// known_hosts, root's authorized_keys. c must not change afterwards.
func (r *Renderer) Prepare(ctx context.Context, c *Cluster) (*Snapshot, error) {
	start := time.Now()
	s := &Snapshot{r: r, c: c, byName: make(map[string]*Node, len(c.Nodes)), accounts: map[string]*imageAccounts{}}
	var errs []error
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Name == "" {
			errs = append(errs, fmt.Errorf("node %d: no name", i))
			continue
		}
		if _, dup := s.byName[n.Name]; dup {
			errs = append(errs, fmt.Errorf("node %s: listed twice", n.Name))
			continue
		}
		s.byName[n.Name] = n
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("prepare overlays: %w", err)
	}
	s.shared = append(s.shared, File{Path: HostsPath, Mode: 0o644, Data: hostsFile(c), Source: "built-in"})
	if len(bytes.TrimSpace(c.AuthorizedKeys)) > 0 {
		if err := checkAuthorizedKeys(c.AuthorizedKeys); err != nil {
			return nil, fmt.Errorf("prepare overlays: %w", err)
		}
		s.shared = append(s.shared, File{Path: AuthorizedKeysPath, Mode: 0o600, Data: c.AuthorizedKeys, Source: "built-in"})
	}
	if r.cfg.HostKeys != nil {
		keys, err := r.loadKeys(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("prepare overlays: %w", err)
		}
		s.keys = keys
		if !r.cfg.NoKnownHosts {
			kh := knownHosts(c, keys)
			s.shared = append(s.shared, File{Path: KnownHostsPath, Mode: 0o644, Data: kh, Source: "built-in"})
		}
	}
	s.sharedAll = sharedWithDirs(s.shared)
	r.log.Debug("overlays prepared", "nodes", len(c.Nodes), "dur", time.Since(start))
	return s, nil
}

// Shared returns the files every node of the snapshot gets as they are
// (/etc/hosts, known_hosts, root's authorized_keys) with their
// directories, sorted: the same slice at every call, never to be modified.
// The head can archive and compress it once per snapshot and serve it
// before each node's own part (Overlay.Own), so that a boot storm does not
// compress /etc/hosts of every node for every node.
func (s *Snapshot) Shared() []File { return s.sharedAll }

func sharedWithDirs(files []File) []File {
	m := map[string]File{}
	for _, f := range files {
		m[f.Path] = f
	}
	for _, f := range files {
		for d := path.Dir(f.Path); d != "." && d != "/"; d = path.Dir(d) {
			if _, done := m[d]; done {
				break
			}
			mode := fs.FileMode(0o755)
			if dm, ok := defaultDirModes[d]; ok {
				mode = dm
			}
			m[d] = File{Path: d, Mode: fs.ModeDir | mode, Source: "directory"}
		}
	}
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// firstByte identifies a content slice by its first byte's address.
func firstByte(b []byte) *byte {
	if len(b) == 0 {
		return nil
	}
	return &b[0]
}

// loadKeys returns every node's host keys, from the renderer's copy, the
// store, or new ones.
func (r *Renderer) loadKeys(ctx context.Context, c *Cluster) (map[string]*nodeKeys, error) {
	out := make(map[string]*nodeKeys, len(c.Nodes))
	var missing []string
	r.mu.Lock()
	for i := range c.Nodes {
		if k, ok := r.keys[c.Nodes[i].Name]; ok {
			out[c.Nodes[i].Name] = k
		} else {
			missing = append(missing, c.Nodes[i].Name)
		}
	}
	r.mu.Unlock()
	if len(missing) == 0 {
		return out, nil
	}
	got, err := hostkeys.Ensure(ctx, r.cfg.HostKeys, missing, r.cfg.KeyTypes)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range missing {
		nk := &nodeKeys{keys: got[n]}
		for _, k := range got[n] {
			priv, err := k.PrivateFile()
			if err != nil {
				return nil, fmt.Errorf("host keys of %s: %w", n, err)
			}
			nk.files = append(nk.files, [2][]byte{priv, k.PublicFile("root@" + n)})
			pub, err := k.PublicKey()
			if err != nil {
				return nil, fmt.Errorf("host keys of %s: %w", n, err)
			}
			nk.known = append(nk.known, ssh.MarshalAuthorizedKey(pub))
		}
		r.keys[n] = nk
		out[n] = nk
	}
	return out, nil
}

// Render renders the overlay of node for one boot; token is the boot's
// report token, written into the agent's configuration. A failing template
// returns a *TemplateError; other nodes are not affected.
func (s *Snapshot) Render(ctx context.Context, node, token string) (*Overlay, error) {
	n, ok := s.byName[node]
	if !ok {
		return nil, fmt.Errorf("render overlay of %s: not in the cluster", node)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	acc := s.imageAccounts(n)
	if acc.err != nil {
		return nil, fmt.Errorf("render overlay of %s: image %s: %w", node, n.Image.Name, acc.err)
	}
	files := map[string]File{}
	put := func(f File) {
		if f.Source == "" {
			f.Source = "built-in"
		}
		files[f.Path] = f
	}
	for _, f := range s.shared {
		put(f)
	}
	sharedData := make(map[string]*byte, len(s.shared))
	for _, f := range s.shared {
		sharedData[f.Path] = firstByte(f.Data)
	}
	put(File{Path: HostnamePath, Mode: 0o644, Data: []byte(n.HostnameOrName() + "\n")})
	cfg, err := nodeConfig(s.c, n, token)
	if err != nil {
		return nil, fmt.Errorf("render overlay of %s: %w", node, err)
	}
	put(File{Path: overlay.ConfigPath, Mode: 0o600}) // written last, with the generation
	nf, err := networkFiles(s.c, n)
	if err != nil {
		return nil, fmt.Errorf("render overlay of %s: %w", node, err)
	}
	for _, f := range nf {
		put(f)
	}
	if nk := s.keys[node]; nk != nil {
		privMode, privGID := fs.FileMode(0o600), 0
		if gid, ok := acc.ids.Group("ssh_keys"); ok && acc.known {
			privMode, privGID = 0o640, gid // EL images: sshd reads keys as group ssh_keys
		}
		for i, k := range nk.keys {
			p := "etc/ssh/" + k.FileName()
			put(File{Path: p, Mode: privMode, GID: privGID, Data: nk.files[i][0]})
			put(File{Path: p + ".pub", Mode: 0o644, Data: nk.files[i][1]})
		}
	}
	for _, f := range acc.files {
		put(f)
	}
	data := s.data(n)
	var attrs []attrSource
	for _, p := range n.Profiles {
		t := s.r.trees[p]
		if t == nil {
			continue
		}
		for _, out := range slices.Sorted(maps.Keys(t.entries)) {
			f, skip, err := s.renderEntry(n, t, t.entries[out], data)
			if err != nil {
				return nil, err
			}
			if skip {
				delete(files, out)
				continue
			}
			files[out] = f
		}
		for _, rule := range t.attrs {
			attrs = append(attrs, attrSource{t, rule})
		}
	}
	o := &Overlay{Node: node, ModTime: s.c.ModTime, shared: map[string]bool{}}
	for p, d := range sharedData {
		f, ok := files[p]
		switch {
		case !ok:
			o.sharedGone = true
		case firstByte(f.Data) == d:
			o.shared[p] = true
		}
	}
	if o.ModTime.IsZero() {
		o.ModTime = time.Unix(0, 0)
	}
	dirs := s.directories(n, files)
	if err := applyAttrs(n, files, dirs, attrs, acc.ids); err != nil {
		return nil, err
	}
	o.Files = make([]File, 0, len(files)+len(dirs))
	for _, f := range files {
		o.Files = append(o.Files, f)
	}
	for _, d := range dirs {
		o.Files = append(o.Files, d)
	}
	slices.SortFunc(o.Files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	// The configuration lists the overlay's files, so that the agent
	// leaves them as they are, and carries the generation of everything
	// else.
	runtime := o.RuntimeFiles()
	for _, f := range runtime {
		cfg.OverlayFiles = append(cfg.OverlayFiles, f.Path)
	}
	if cfg.OverlayGeneration, err = Generation(cfg, runtime); err != nil {
		return nil, fmt.Errorf("render overlay of %s: %w", node, err)
	}
	js, err := encodeConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("render overlay of %s: %w", node, err)
	}
	o.File(overlay.ConfigPath).Data = js
	o.Config = cfg
	return o, nil
}

// RuntimeFiles returns the overlay's regular files but the agent's
// configuration, as a runtime overlay (overlay.RuntimeOverlay) carries
// them to a running node.
func (o *Overlay) RuntimeFiles() []overlay.File {
	var out []overlay.File
	for _, f := range o.Files {
		if !f.Mode.IsRegular() || f.Path == overlay.ConfigPath {
			continue
		}
		out = append(out, overlay.File{Path: f.Path, Mode: uint32(f.Mode.Perm()), Data: f.Data})
	}
	return out
}

// data returns the template data of node n.
func (s *Snapshot) data(n *Node) *Data {
	d := &Data{Node: n, Cluster: s.c, Head: &s.c.Head, Image: &n.Image, Hostname: n.HostnameOrName(), Tags: n.Tags}
	if d.Tags == nil {
		d.Tags = map[string]string{}
	}
	d.FQDN = fqdn(d.Hostname, s.c.Domain)
	if len(n.Interfaces) > 0 {
		d.Interface = n.Interfaces[0]
	}
	d.Values = make(map[string]any, len(s.c.Values)+len(n.Values))
	maps.Copy(d.Values, s.c.Values)
	maps.Copy(d.Values, n.Values)
	return d
}

// renderEntry makes the file of one tree entry for node n.
func (s *Snapshot) renderEntry(n *Node, t *tree, e *entry, data *Data) (File, bool, error) {
	f := File{Path: e.out, Mode: e.perm, Source: "profile " + t.profile + ": " + e.src}
	switch {
	case e.link != "":
		f.Mode, f.Linkname = fs.ModeSymlink|0o777, e.link
	case e.tmpl != nil:
		var b bytes.Buffer
		if err := e.tmpl.Execute(&b, data); err != nil {
			if errors.Is(err, errSkip) {
				return File{}, true, nil
			}
			te := &TemplateError{Node: n.Name, Profile: t.profile, Path: e.src, Err: err}
			if m := execLine.FindStringSubmatch(err.Error()); m != nil {
				te.Line, _ = strconv.Atoi(m[1])
				te.msg = strings.TrimPrefix(err.Error(), m[0])
			}
			return File{}, false, te
		}
		f.Data = b.Bytes()
	default:
		f.Data = e.data
	}
	return f, false, nil
}

// imageAccounts merges the head's accounts into n's image once per image.
func (s *Snapshot) imageAccounts(n *Node) *imageAccounts {
	key := cmp.Or(n.Image.Digest, n.Image.Name)
	s.mu.Lock()
	a, ok := s.accounts[key]
	if !ok {
		a = &imageAccounts{}
		s.accounts[key] = a
	}
	s.mu.Unlock()
	a.once.Do(func() {
		if n.Image.Accounts == nil {
			a.ids = accounts.Files{Passwd: []byte("root:x:0:0::/root:/bin/sh\n"), Group: []byte("root:x:0:\n")}.IDs()
			return
		}
		a.known = true
		merged := *n.Image.Accounts
		if s.r.cfg.Accounts != nil {
			var err error
			if merged, err = accounts.Merge(*n.Image.Accounts, s.r.cfg.Accounts); err != nil {
				a.err = fmt.Errorf("merge accounts: %w", err)
				return
			}
			a.files = accountFiles(merged)
		}
		a.ids = merged.IDs()
		// Shadow files: root:shadow 0640 where the image has a shadow group
		// (Debian), root:root 0000 otherwise (EL).
		shadowMode, shadowGID := fs.FileMode(0), 0
		if gid, ok := a.ids.Group("shadow"); ok {
			shadowMode, shadowGID = 0o640, gid
		}
		for i := range a.files {
			if a.files[i].Path == accounts.ShadowPath || a.files[i].Path == accounts.GShadowPath {
				a.files[i].Mode, a.files[i].GID = shadowMode, shadowGID
			}
		}
	})
	return a
}

func accountFiles(f accounts.Files) []File {
	out := []File{
		{Path: accounts.PasswdPath, Mode: 0o644, Data: f.Passwd, Source: "built-in (accounts)"},
		{Path: accounts.GroupPath, Mode: 0o644, Data: f.Group, Source: "built-in (accounts)"},
		{Path: accounts.ShadowPath, Data: f.Shadow, Source: "built-in (accounts)"},
	}
	if f.GShadow != nil {
		out = append(out, File{Path: accounts.GShadowPath, Data: f.GShadow, Source: "built-in (accounts)"})
	}
	return out
}

// defaultDirModes are the modes of directories the image does not describe
// (Image.Dirs) and no template tree has; others get 0755. Owner root.
var defaultDirModes = map[string]fs.FileMode{
	"root":                                  0o700,
	"root/.ssh":                             0o700,
	"tmp":                                   fs.ModeSticky | 0o777,
	"var/tmp":                               fs.ModeSticky | 0o777,
	"etc/NetworkManager/system-connections": 0o700,
}

// directories returns the directory entries the overlay's files need, so
// that the kernel can create each file (it makes no missing parents) and
// an existing directory keeps the image's mode and owner.
func (s *Snapshot) directories(n *Node, files map[string]File) map[string]File {
	dirs := map[string]File{}
	for p := range files {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, done := dirs[d]; done {
				break
			}
			dirs[d] = s.dir(n, d)
		}
	}
	return dirs
}

func (s *Snapshot) dir(n *Node, d string) File {
	if a, ok := n.Image.Dirs[d]; ok {
		return File{Path: d, Mode: fs.ModeDir | a.Mode, UID: a.UID, GID: a.GID, Source: "image directory"}
	}
	mode, src := fs.FileMode(0o755), "directory"
	if m, ok := defaultDirModes[d]; ok {
		mode = m
	}
	for _, p := range n.Profiles {
		if t := s.r.trees[p]; t != nil {
			if m, ok := t.dirs[d]; ok {
				mode, src = m, "profile "+p+": "+d+"/"
			}
		}
	}
	return File{Path: d, Mode: fs.ModeDir | mode, Source: src}
}

type attrSource struct {
	t    *tree
	rule attrRule
}

// applyAttrs applies the attribute files of the node's profiles, in chain
// order, resolving owner names in the node's accounts.
func applyAttrs(n *Node, files, dirs map[string]File, attrs []attrSource, ids accounts.IDs) error {
	var errs []error
	for _, a := range attrs {
		r := a.rule
		m, isDir := files, false
		f, ok := files[r.path]
		if !ok {
			if f, ok = dirs[r.path]; !ok {
				continue // the file was skipped for this node
			}
			m, isDir = dirs, true
		}
		where := fmt.Sprintf("render overlay of %s: profile %s: %s:%d", n.Name, a.t.profile, AttrsFile, r.line)
		if !r.keepMode {
			f.Mode = f.Mode&fs.ModeType | r.mode
		}
		if r.owner != "-" {
			uid, err := lookup(r.owner, ids.User)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: owner %w", where, err))
			}
			f.UID = uid
		}
		if r.group != "-" {
			gid, err := lookup(r.group, ids.Group)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: group %w", where, err))
			}
			f.GID = gid
		}
		if isDir {
			f.Source += " + " + AttrsFile
		}
		m[r.path] = f
	}
	return errors.Join(errs...)
}

func lookup(name string, byName func(string) (int, bool)) (int, error) {
	if id, err := strconv.Atoi(name); err == nil && id >= 0 {
		return id, nil
	}
	if id, ok := byName(name); ok {
		return id, nil
	}
	return 0, fmt.Errorf("%q: not in the node's accounts", name)
}

func checkAuthorizedKeys(b []byte) error {
	for i, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l)); err != nil {
			return fmt.Errorf("authorized_keys line %d: %w", i+1, err)
		}
	}
	return nil
}

// knownHosts renders ssh_known_hosts for every node with keys, in the
// format of hostkeys.WriteKnownHosts, from the keys' cached encodings.
func knownHosts(c *Cluster, keys map[string]*nodeKeys) []byte {
	var b bytes.Buffer
	b.WriteString(header("#"))
	for i := range c.Nodes {
		n := &c.Nodes[i]
		nk := keys[n.Name]
		if nk == nil {
			continue
		}
		var names []string
		for j, ifc := range n.Interfaces {
			names = append(names, hostNames(n, j, c.Domain)...)
			if ifc.Address.IsValid() {
				names = append(names, ifc.Address.Addr().String())
			}
		}
		if len(names) == 0 {
			names = []string{n.Name}
		}
		joined := strings.Join(dedupe(names...), ",")
		for _, k := range nk.known {
			b.WriteString(joined)
			b.WriteByte(' ')
			b.Write(k)
		}
	}
	return b.Bytes()
}
