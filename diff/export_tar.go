package diff

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"io"
	"path"
	"strconv"
	"strings"
	"time"
)

// tarHeader is what Export writes of one entry: the fields of tar.Header
// it uses. Headers are PAX with numeric owners only, mtimes to the
// nanosecond, xattrs as SCHILY.xattr records.
type tarHeader struct {
	typeflag       byte
	name, linkname string
	mode           int64
	uid, gid       int
	size           int64
	mtime          time.Time
	devmajor       int64
	devminor       int64
	xattrs         []xattrPair // sorted by name
}

// tarHeader returns h as archive/tar takes it.
func (h *tarHeader) tarHeader() *tar.Header {
	hdr := &tar.Header{
		Typeflag: h.typeflag,
		Name:     h.name,
		Linkname: h.linkname,
		Mode:     h.mode,
		Uid:      h.uid,
		Gid:      h.gid,
		Size:     h.size,
		ModTime:  h.mtime,
		Devmajor: h.devmajor,
		Devminor: h.devminor,
		Format:   tar.FormatPAX,
	}
	if len(h.xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(h.xattrs))
		for _, x := range h.xattrs {
			hdr.PAXRecords["SCHILY.xattr."+x.name] = x.value
		}
	}
	return hdr
}

// appendTarHeader appends to dst the bytes archive/tar's Writer.WriteHeader
// writes for h.tarHeader() (the PAX extended header, when one is needed,
// then the entry's header block), without its allocations: archive/tar
// spent a third of Export's time on many small files in maps, sorting,
// fmt and checksums it computes more than once.
//
// Only headers whose every field fits its ustar field (ASCII names and
// link names of at most 100 bytes, owners, devices and sizes in octal,
// mtimes from 1970 to 2242) and whose xattr names make valid PAX keys are
// written here; the rest, rare, go through archive/tar itself, so the
// bytes are the same in every case (TestTarHeaderMatchesArchiveTar checks
// both paths against archive/tar).
func appendTarHeader(dst []byte, h *tarHeader) ([]byte, error) {
	if !h.fastPath() {
		return appendTarHeaderSlow(dst, h)
	}
	secs, nsecs := h.mtime.Unix(), h.mtime.Nanosecond()
	if nsecs != 0 || len(h.xattrs) > 0 {
		// PAX: the records, sorted by key ("SCHILY.xattr.*" sorts before
		// "mtime"), in a pseudo-file before the header.
		var recs [1024]byte
		data := recs[:0]
		for _, x := range h.xattrs {
			data = appendPAXRecord(data, "SCHILY.xattr.", x.name, x.value)
		}
		if nsecs != 0 {
			// "%d.%09d" without trailing zeros, as archive/tar.
			var tb, fb [24]byte
			t := strconv.AppendInt(tb[:0], secs, 10)
			t = append(t, '.')
			frac := strconv.AppendInt(fb[:0], int64(nsecs)+1e9, 10)[1:] // 9 digits
			t = append(t, bytes.TrimRight(frac, "0")...)
			data = appendPAXRecord(data, "", "mtime", string(t))
		}
		dir, file := path.Split(h.name)
		name := path.Join(dir, "PaxHeaders.0", file)
		if len(name) > 100 {
			name = name[:100]
		}
		name = strings.TrimRight(name, "/")
		var blk [512]byte
		copy(blk[0:100], name)
		putOctal(blk[100:108], 0)
		putOctal(blk[108:116], 0)
		putOctal(blk[116:124], 0)
		putOctal(blk[124:136], int64(len(data)))
		putOctal(blk[136:148], 0)
		blk[156] = tar.TypeXHeader
		setUSTARMagic(&blk)
		dst = append(dst, blk[:]...)
		dst = append(dst, data...)
		dst = append(dst, zeroBlock[:blockPad(int64(len(data)))]...)
	}
	var blk [512]byte
	copy(blk[0:100], h.name)
	putOctal(blk[100:108], h.mode)
	putOctal(blk[108:116], int64(h.uid))
	putOctal(blk[116:124], int64(h.gid))
	putOctal(blk[124:136], h.size)
	putOctal(blk[136:148], secs)
	blk[156] = h.typeflag
	copy(blk[157:257], h.linkname)
	putOctal(blk[329:337], h.devmajor)
	putOctal(blk[337:345], h.devminor)
	setUSTARMagic(&blk)
	return append(dst, blk[:]...), nil
}

// fastPath reports whether appendTarHeader can write h itself: whether
// archive/tar would write it as USTAR, or as PAX with no other record
// than mtime and xattrs.
func (h *tarHeader) fastPath() bool {
	fits := func(x int64, digits uint) bool { return x >= 0 && x < 1<<(3*digits) }
	if !ustarString(h.name) || !ustarString(h.linkname) || !fits(h.mode, 7) ||
		!fits(int64(h.uid), 7) || !fits(int64(h.gid), 7) || !fits(h.size, 11) ||
		!fits(h.devmajor, 7) || !fits(h.devminor, 7) || !fits(h.mtime.Unix(), 11) {
		return false
	}
	switch h.typeflag {
	case tar.TypeReg, tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
	default:
		return false
	}
	if h.typeflag != tar.TypeDir && h.typeflag != tar.TypeLink && h.typeflag != tar.TypeSymlink && strings.HasSuffix(h.name, "/") {
		return false // archive/tar refuses it; let it say so
	}
	for _, x := range h.xattrs {
		if strings.ContainsAny(x.name, "=\x00") || x.name == "" {
			return false // not a valid PAX key: archive/tar's error
		}
	}
	return true
}

// ustarString reports whether s fits a ustar name field as it is: ASCII
// without NUL, at most 100 bytes.
func ustarString(s string) bool {
	if len(s) > 100 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 || c >= 0x80 {
			return false
		}
	}
	return true
}

// putOctal writes x as archive/tar does: zero-padded octal filling all
// but the last byte of b, which stays NUL. x must fit.
func putOctal(b []byte, x int64) {
	for i := len(b) - 2; i >= 0; i-- {
		b[i] = byte('0' + x&7)
		x >>= 3
	}
}

// setUSTARMagic sets the ustar magic and version and the checksum of blk,
// as archive/tar's setFormat(FormatUSTAR|FormatPAX).
func setUSTARMagic(blk *[512]byte) {
	copy(blk[257:263], "ustar\x00")
	copy(blk[263:265], "00")
	// The unsigned sum of the bytes, the checksum field counted as
	// spaces: eight bytes at a time, in four 16-bit lanes (64 words of at
	// most 2*255 per lane cannot overflow them).
	copy(blk[148:156], "        ")
	var lanes uint64
	for i := 0; i < 512; i += 8 {
		w := binary.LittleEndian.Uint64(blk[i:])
		lanes += w&0x00ff00ff00ff00ff + (w>>8)&0x00ff00ff00ff00ff
	}
	sum := int64(lanes&0xffff + (lanes>>16)&0xffff + (lanes>>32)&0xffff + lanes>>48)
	putOctal(blk[148:155], sum)
	blk[154], blk[155] = 0, ' '
}

// appendPAXRecord appends the PAX record prefix+key=value, "LEN
// prefixkey=value\n" with LEN counting itself, as archive/tar's
// formatPAXRecord.
func appendPAXRecord(dst []byte, prefix, key, value string) []byte {
	size := len(prefix) + len(key) + len(value) + 3
	size += len(strconv.Itoa(size))
	if n := len(strconv.Itoa(size)) + len(prefix) + len(key) + len(value) + 3; n != size {
		size = n
	}
	dst = strconv.AppendInt(dst, int64(size), 10)
	dst = append(dst, ' ')
	dst = append(dst, prefix...)
	dst = append(dst, key...)
	dst = append(dst, '=')
	dst = append(dst, value...)
	return append(dst, '\n')
}

// zeroBlock pads content to whole blocks.
var zeroBlock [512]byte

// blockPad returns the padding after n bytes of content.
func blockPad(n int64) int64 { return -n & 511 }

// appendTarHeaderSlow has archive/tar write h.
func appendTarHeaderSlow(dst []byte, h *tarHeader) ([]byte, error) {
	buf := bytes.NewBuffer(dst)
	if err := tar.NewWriter(buf).WriteHeader(h.tarHeader()); err != nil {
		return dst, err
	}
	return buf.Bytes(), nil
}

// tarTrailer is what ends a tar: two zero blocks.
func writeTarTrailer(w io.Writer) error {
	_, err := w.Write(make([]byte, 1024))
	return err
}
