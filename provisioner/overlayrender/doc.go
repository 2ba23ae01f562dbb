// Package overlayrender renders each node's overlay: the files the kernel
// unpacks over the image at boot (host name, /etc/hosts, network
// configuration, the agent's configuration, SSH host keys, root's
// authorized_keys, accounts) and the files of the node's profiles, from Go
// text/template templates.
//
// The head builds a [Cluster] from its inventory (every node with its boot
// plan resolved), prepares it once, then renders a node at each overlay
// request:
//
//	r, err := overlayrender.New(overlayrender.Config{
//		Profiles: map[string]fs.FS{"compute": os.DirFS("/etc/ramboot/profiles/compute")},
//		HostKeys: &hostkeys.Dir{Path: "/var/lib/ramboot/ssh-host-keys"},
//		Accounts: set, // accounts.Select of the head's files
//	})
//	snap, err := r.Prepare(ctx, &cluster) // /etc/hosts, known_hosts: once
//	o, err := snap.Render(ctx, "n001", token)
//	err = newc.WriteFiles(w, o.NewcFiles())
//
// # Template trees
//
// A profile's template tree is a directory whose files become files under
// the node's root: etc/motd in the tree is /etc/motd on the node. A file
// whose name ends in ".tmpl" is rendered with text/template ([Data] is its
// "."; funcs are listed in docs/overlays.md) and written without the
// suffix; other files are copied. Symbolic links are kept. A file keeps
// its permission bits; files and directories belong to root unless the
// tree's attribute file ([AttrsFile]) says otherwise, since the owner of a
// file on the head means nothing on a node. The trees of a node's profile
// chain apply in order: a later profile's file replaces an earlier one's
// and a built-in file at the same path, except the agent's configuration.
// A template that calls skip leaves its path out of that node's overlay
// (a built-in file there too).
//
// # Built-in files
//
// etc/hostname; etc/hosts (every node of the cluster, the same bytes for
// all, rendered once per Prepare); the network configuration for the
// node's [NetworkStack]; etc/ramboot/node.json (images/overlay.Config, the
// agent's configuration, with this boot's token); etc/ssh/ssh_host_*_key
// and .pub from the key store, and etc/ssh/ssh_known_hosts of the whole
// cluster; root/.ssh/authorized_keys; etc/passwd, group, shadow and
// gshadow when accounts are merged. docs/overlays.md shows each one.
//
// # Directories
//
// The kernel creates no missing parent directory when it unpacks an
// archive, and applies a directory entry's mode and owner to a directory
// that exists. So the overlay holds an entry for every parent of its
// files, with the image's own mode and owner when Image.Dirs has them,
// else the tree's directory mode, else 0755 (0700 for root and
// root/.ssh, 1777 for tmp), owned by root.
//
// # Failures
//
// New reports every template that does not parse, with profile, file and
// line. Render reports a template that fails for one node as a
// [*TemplateError] naming the node, profile, file and line; other nodes
// render as before.
package overlayrender
