package diff

import (
	"archive/tar"
	"fmt"
	"hash/maphash"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Creating files is the kernel's work, and on ext4 and xfs two threads
// creating files in different directories run side by side (two GNU tars
// on two halves of a small-file tree take ~0.55 of one tar's time here),
// while creates in one directory serialise on its lock. So new regular
// files are handed to writers sharded by parent directory: files of one
// directory stay in order on one writer, different directories proceed in
// parallel.
//
// Only entries that cannot interact with anything else go to a writer: a
// regular file whose data is all in hand, whose parent directory this
// Apply created (so no lower entry can be in the way) and whose path this
// layer has not written yet. Everything else (whiteouts, hardlinks,
// replacements, directories listed again, closing cached fds, the end of
// the stream) first waits for the writers to drain: the barrier. Path
// resolution always stays on the applier goroutine; writers only make *at
// calls on directory handles it resolved, so the containment rules are the
// same as for the serial path.

// fileJob is one new regular file for a writer.
type fileJob struct {
	hdr  *tar.Header
	data []byte
	ph   *dirHandle
	name string
}

// writers is the pool of file writers of one Apply.
type writers struct {
	queues []chan fileJob
	seed   maphash.Seed
	done   sync.WaitGroup // writer goroutines
	jobs   sync.WaitGroup // jobs queued and not finished

	abort  atomic.Bool // stop writing: the Apply is failing
	failed atomic.Bool
	errMu  sync.Mutex
	err    error // the first writer error
}

// writerCount is how many writers an Apply starts: none on one CPU, where
// they would only add hand-offs.
func writerCount() int {
	return min(runtime.GOMAXPROCS(0), 4) &^ 1
}

func (a *applier) startWriters(n int) {
	if n < 2 {
		return
	}
	w := &writers{queues: make([]chan fileJob, n), seed: maphash.MakeSeed()}
	for i := range w.queues {
		q := make(chan fileJob, 256)
		w.queues[i] = q
		w.done.Add(1)
		go func() {
			defer w.done.Done()
			for job := range q {
				if !w.abort.Load() {
					if err := a.writeFile(job); err != nil {
						w.fail(fmt.Errorf("entry %q: %w", job.hdr.Name, err))
					}
				}
				w.jobs.Done()
			}
		}()
	}
	a.writers = w
}

func (w *writers) fail(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.errMu.Unlock()
	w.failed.Store(true)
	w.abort.Store(true)
}

// stopWriters ends the writers and waits for them, so that nothing writes
// into the root after Apply returns.
func (a *applier) stopWriters() {
	w := a.writers
	if w == nil {
		return
	}
	w.abort.Store(true)
	for _, q := range w.queues {
		close(q)
	}
	w.done.Wait()
	a.writers = nil
}

// barrier waits until every queued file is written and returns the first
// writer error.
func (a *applier) barrier() error {
	w := a.writers
	if w == nil {
		return nil
	}
	a.waitWriters()
	return a.writerErr()
}

// writerErr returns the first writer error, without waiting.
func (a *applier) writerErr() error {
	w := a.writers
	if w == nil || !w.failed.Load() {
		return nil
	}
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

// canDispatch reports whether the regular file canon, in directory ph,
// may go to a writer: this Apply created ph and has written nothing at
// canon yet.
func (a *applier) canDispatch(ph *dirHandle, canon string) bool {
	if a.writers == nil {
		return false
	}
	if _, ok := a.created[ph.canon]; !ok {
		return false
	}
	_, written := a.touched[canon]
	_, whitedOut := a.whited[canon] // an overlay whiteout device is there
	return !written && !whitedOut
}

// dispatch queues a new regular file; the writer of its directory writes it.
func (a *applier) dispatch(hdr *tar.Header, data []byte, ph *dirHandle, name string) {
	w := a.writers
	q := w.queues[maphash.String(w.seed, ph.canon)%uint64(len(w.queues))]
	w.jobs.Add(1)
	a.queued++
	q <- fileJob{hdr: hdr, data: data, ph: ph, name: name}
}

// writeFile creates one new regular file on a writer goroutine. Its path
// cannot be taken (canDispatch), so an existing entry there (a
// case-insensitive directory, or someone else writing into the root) is an
// error rather than something to replace.
func (a *applier) writeFile(job fileJob) error {
	perm := entryPerm(job.hdr)
	fd, err := unix.Openat(job.ph.fd, job.name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm&0o777)
	if err != nil {
		return fmt.Errorf("create file: %w", err)
	}
	body := &bodyReader{cur: job.data}
	if err := a.fileBody(job.hdr, body, fd, perm, job.ph); err != nil {
		unix.Close(fd)
		return err
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close file: %w", err)
	}
	return nil
}

// waitWriters is the barrier for the applier's own steps: a writer error
// it finds is reported by the main loop, against the entry that failed.
func (a *applier) waitWriters() {
	if a.writers != nil && a.queued > 0 {
		a.writers.jobs.Wait()
		a.queued = 0
	}
}

// dirEmpty reports whether the directory open as fd has no entries.
func dirEmpty(fd int) (bool, error) {
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(dfd)
	buf := make([]byte, 4096)
	for {
		n, err := unix.Getdents(dfd, buf)
		if err != nil {
			return false, err
		}
		if n == 0 {
			return true, nil
		}
		_, _, names := unix.ParseDirent(buf[:n], -1, nil)
		if len(names) > 0 { // ParseDirent leaves out "." and ".."
			return false, nil
		}
	}
}
