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
package image
