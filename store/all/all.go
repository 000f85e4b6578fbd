// Package all links every graph driver of layers into a program, for
// library users of package store, which names no driver itself:
//
//	import _ "github.com/layers-storage/layers/store/all"
package all

import (
	// Each driver registers itself with package graphdriver.
	_ "github.com/layers-storage/layers/overlay"
	_ "github.com/layers-storage/layers/vfs"
)
