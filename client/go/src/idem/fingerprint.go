package idem

import (
	"crypto/sha256"
	"strconv"
)

// Fingerprint is the raw 32-byte SHA-256 of the request bytes: what the
// server computes from BeginRequest.request, and what the C++ and Python
// clients compute.
func Fingerprint(data []byte) []byte {
	sum := sha256.Sum256(data)
	return sum[:]
}

// FingerprintParts hashes several parts unambiguously: each part is written
// as its length in decimal, a colon and its bytes ("4:POST10:/v1/orders2:{}").
// The same bytes as fingerprint_parts in Python and FingerprintParts in C++.
func FingerprintParts(parts ...[]byte) []byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(strconv.Itoa(len(p))))
		h.Write([]byte{':'})
		h.Write(p)
	}
	return h.Sum(nil)
}
