package images

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"
)

// Digest names content by its SHA-256: "sha256:" and 64 lower-case
// hexadecimal digits.
type Digest string

const digestPrefix = "sha256:"

// ParseDigest checks that s is a well-formed digest and returns it.
func ParseDigest(s string) (Digest, error) {
	hexPart, ok := strings.CutPrefix(s, digestPrefix)
	if !ok {
		return "", fmt.Errorf("parse digest %q: want prefix %q", s, digestPrefix)
	}
	if len(hexPart) != 2*sha256.Size {
		return "", fmt.Errorf("parse digest %q: want %d hex digits, got %d", s, 2*sha256.Size, len(hexPart))
	}
	for i := 0; i < len(hexPart); i++ {
		c := hexPart[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", fmt.Errorf("parse digest %q: want lower-case hex digits, got %q at %d", s, c, len(digestPrefix)+i)
		}
	}
	return Digest(s), nil
}

// Hex returns the hexadecimal part of d, or "" when d is not well formed.
func (d Digest) Hex() string {
	if _, err := ParseDigest(string(d)); err != nil {
		return ""
	}
	return string(d[len(digestPrefix):])
}

// String returns d as a string.
func (d Digest) String() string {
	return string(d)
}

// DigestOf returns the digest of b.
func DigestOf(b []byte) Digest {
	sum := sha256.Sum256(b)
	return Digest(digestPrefix + hex.EncodeToString(sum[:]))
}

// DigestFromHash returns the digest of what was written to h, which must
// come from crypto/sha256.
func DigestFromHash(h hash.Hash) Digest {
	if h.Size() != sha256.Size {
		panic(fmt.Sprintf("images: DigestFromHash of a %d-byte hash", h.Size()))
	}
	return Digest(digestPrefix + hex.EncodeToString(h.Sum(nil)))
}
