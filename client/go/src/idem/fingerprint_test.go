package idem

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func TestFingerprintIsSha256(t *testing.T) {
	want := sha256.Sum256([]byte("abc"))
	if got := Fingerprint([]byte("abc")); hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
		t.Fatalf("Fingerprint = %x, want %x", got, want)
	}
}

func TestFingerprintPartsIsLengthPrefixed(t *testing.T) {
	want := sha256.Sum256([]byte("4:POST10:/v1/orders2:{}"))
	got := FingerprintParts([]byte("POST"), []byte("/v1/orders"), []byte("{}"))
	if hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
		t.Fatalf("FingerprintParts = %x, want %x", got, want)
	}
	// Moving a byte between parts changes the fingerprint.
	if hex.EncodeToString(FingerprintParts([]byte("ab"), []byte("c"))) ==
		hex.EncodeToString(FingerprintParts([]byte("a"), []byte("bc"))) {
		t.Fatal("parts are ambiguous")
	}
}
