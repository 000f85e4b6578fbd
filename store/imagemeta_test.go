package store_test

import (
	"encoding/json"
	"testing"

	"github.com/layers-storage/layers/store"
)

// An image's metadata is "{}" by default, set at creation or later, kept
// across Opens, and refused when it is not JSON.
func TestImageMetadata(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		img := mustImage(t, s, []string{"plain"}, baseTar)
		if string(img.Metadata) != "{}" {
			t.Errorf("default metadata %s, want {}", img.Metadata)
		}
		if err := s.SetImageMetadata("plain", json.RawMessage(`{"compression":"zstd"}`)); err != nil {
			t.Fatal(err)
		}
		if err := s.SetImageMetadata("plain", json.RawMessage(`{nope`)); err == nil {
			t.Error("metadata that is not JSON was accepted")
		}
		if _, err := s.CreateImage(store.ImageOptions{Config: []byte(`{"rootfs":{"type":"layers","diff_ids":[]}}`), Metadata: json.RawMessage(`[`)}); err == nil {
			t.Error("CreateImage took metadata that is not JSON")
		}
		other, err := s.CreateImage(store.ImageOptions{Config: []byte(`{"rootfs":{"type":"layers","diff_ids":[]}}`), Names: []string{"other"}, Metadata: json.RawMessage(`{"a":1}`)})
		if err != nil {
			t.Fatal(err)
		}
		if string(other.Metadata) != `{"a":1}` {
			t.Errorf("metadata given at creation: %s", other.Metadata)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, driver, root)
		got, err := s.Image("plain")
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Metadata) != `{"compression":"zstd"}` {
			t.Errorf("metadata after reopening: %s", got.Metadata)
		}
	})
}
