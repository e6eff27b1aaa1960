package image

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// imageRef is a parsed image reference, normalised the way containerd and
// the kubelet spell it: docker.io/library/busybox:latest for "busybox".
type imageRef struct {
	domain string // registry host namespace: "docker.io", "registry.k8s.io", "127.0.0.1:5000"
	path   string // repository path on that registry: "library/busybox"
	tag    string // set when the reference names a tag
	digest string // "sha256:<hex>" when the reference names a digest
}

// dockerHubIndex is what go-containerregistry calls Docker Hub; CRI names
// say docker.io.
const dockerHubIndex = "index.docker.io"

// parseRef parses and normalises a reference. A reference with both a tag
// and a digest is a digest reference (the tag is only a hint), as in
// containerd.
func parseRef(s string) (imageRef, error) {
	if s == "" {
		return imageRef{}, fmt.Errorf("empty image reference")
	}
	r, err := name.ParseReference(s)
	if err != nil {
		return imageRef{}, fmt.Errorf("invalid image reference %q: %w", s, err)
	}
	ref := imageRef{
		domain: r.Context().RegistryStr(),
		path:   r.Context().RepositoryStr(),
	}
	if ref.domain == dockerHubIndex {
		ref.domain = "docker.io"
	}
	switch r := r.(type) {
	case name.Tag:
		ref.tag = r.TagStr()
	case name.Digest:
		ref.digest = r.DigestStr()
	}
	return ref, nil
}

// repo is "docker.io/library/busybox".
func (r imageRef) repo() string { return r.domain + "/" + r.path }

// String is the normalised reference: a repo tag or a repo digest.
func (r imageRef) String() string {
	if r.digest != "" {
		return r.repo() + "@" + r.digest
	}
	return r.repo() + ":" + r.tag
}

// withDigest is the repo digest of this repository for a manifest digest.
func (r imageRef) withDigest(digest string) string { return r.repo() + "@" + digest }

var (
	hexPrefixRe = regexp.MustCompile(`^(sha256:)?[0-9a-f]{1,64}$`)
	fullIDRe    = regexp.MustCompile(`^(sha256:)?[0-9a-f]{64}$`)
)

// fullID turns "sha256:<64 hex>" or "<64 hex>" into an image ID.
func fullID(s string) (string, bool) {
	if !fullIDRe.MatchString(s) {
		return "", false
	}
	return "sha256:" + strings.TrimPrefix(s, "sha256:"), true
}

// idPrefix turns "sha256:abc" or "abc" into the ID prefix "sha256:abc".
func idPrefix(s string) (string, bool) {
	if !hexPrefixRe.MatchString(s) {
		return "", false
	}
	return "sha256:" + strings.TrimPrefix(s, "sha256:"), true
}
