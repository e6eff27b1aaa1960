// Package image is peapod's image store: it pulls images from registries
// (https or plain http, mirrors configured by containerd-style hosts.toml
// files, credentials from the CRI request), imports OCI layout and
// docker-save archives, keeps image records, unpacks every layer once into a
// directory that all images sharing it use, and assembles a container's root
// filesystem as an overlay mount with a private upper and work directory over
// those layer directories.
//
// Everything under Config.Root is shared by the daemon and by `peapod image
// import` running beside it: records are rewritten atomically (temp file,
// fsync, rename) under a file lock, a layer is unpacked into a scratch
// directory and renamed into place only once it is complete and its digests
// verified, and layers are garbage-collected only when no image, no
// container rootfs and no pull or import in flight (in any process) uses
// them. A crash at any moment leaves either the old or the new state, plus
// scratch files removed at the next Open.
//
// Layout under Root:
//
//	lock                       flock serialising record changes and GC
//	layout.json                how the layers were written: real root or a user namespace (below)
//	images.json                image records (names, config digest, layers)
//	blobs/sha256/<hex>         image config blobs
//	layers/<hex>/diff/         an unpacked layer, <hex> its diff ID (uncompressed digest)
//	layers/<hex>/usage.json    bytes and inodes of diff/
//	containers/<id>/           rootfs.json, upper/, work/, merged/ of a container
//	tmp/<session>/             scratch space and leases of a live Store
//
// Layer directories hold whiteouts the way overlayfs wants them: a removed
// file is a 0/0 character device and an opaque directory carries the
// trusted.overlay.opaque=y xattr, so the process must run as root.
//
// # In a user namespace
//
// Rootless peapod runs as uid 0 of a user namespace whose ids map to an
// ordinary user and its subordinate ids (detected with
// userns.RunningInUserNS, so RootlessKit and `unshare` behave alike). The
// store works there with three differences, all decided at Open:
//
//   - Opaque directories carry user.overlay.opaque=y (trusted xattrs need
//     real root) and rootfs overlays are mounted with userxattr, index=off
//     and metacopy=off (those features need trusted xattrs). 0/0 whiteout
//     devices can be created in a user namespace and are used as they are.
//   - A layer owner the namespace maps is kept (on disk it is the host id
//     the map gives, e.g. 100000+n). An owner it does not map cannot be set
//     (EINVAL): the file keeps the namespace's root for that id, and the
//     layer is pulled anyway, with one log line per layer counting such
//     files (podman's ignore_chown_errors).
//   - Device nodes other than whiteouts cannot be created (EPERM): they are
//     left out, with one log line per layer. Containers get /dev from the
//     runtime, not from the image.
//
// Layers of one flavour are wrong for the other: real root cannot see the
// intended owners in a namespace's layers (it sees 100000+n) and the
// namespace can neither read trusted.overlay xattrs nor own real root's
// files; a namespace with another id map sees other owners too. So
// layout.json records the flavour and the uid/gid maps of the process that
// unpacked the layers, and Open refuses a store whose layers do not match
// the opening process, with a LayoutError saying why and what to do (use
// the store from where it was made, another root, or remove it). Converting
// is not attempted: it would need the trusted xattrs and owners a namespace
// cannot read or set, and layer blobs are not kept for a re-unpack. A
// store holding no layer, no container rootfs and no other live session
// takes the layout of whoever opens it; a store from before layout.json
// was made by real root. Rootless peapod keeps its own root
// ($XDG_DATA_HOME/peapod), so the two never meet unless told to.
package image
