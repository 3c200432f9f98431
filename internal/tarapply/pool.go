package tarapply

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// job is one regular file for a worker: it is created (O_EXCL) as base in
// dirfd with data as contents, then meta applies.
type job struct {
	dirfd      int
	name, base string
	meta       meta
	data       []byte
}

// pool writes files on a fixed number of goroutines, holding at most
// MaxInFlight bytes of their contents. Its first error stops new work.
type pool struct {
	jobs    chan job
	pending sync.WaitGroup // submitted jobs not yet done
	workers sync.WaitGroup

	mu       sync.Mutex
	cond     *sync.Cond
	inFlight int64
	limit    int64
	err      error
}

func newPool(opts Options) *pool {
	p := &pool{jobs: make(chan job, 4*opts.Workers), limit: opts.MaxInFlight}
	p.cond = sync.NewCond(&p.mu)
	p.workers.Add(opts.Workers)
	for range opts.Workers {
		go p.work()
	}
	return p
}

func (p *pool) work() {
	defer p.workers.Done()
	for j := range p.jobs {
		if p.failed() == nil {
			if err := writeFile(j); err != nil {
				p.fail(&os.PathError{Op: "write", Path: j.name, Err: err})
			}
		}
		p.release(int64(len(j.data)))
		p.pending.Done()
	}
}

// writeFile creates the job's file and sets its contents and metadata.
func writeFile(j job) error {
	fd, err := unix.Openat(j.dirfd, j.base, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	err = writeAll(fd, j.data)
	if err == nil {
		err = finishFile(fd, j.meta)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return err
}

// acquire returns a buffer of n bytes once the in-flight budget allows it.
func (p *pool) acquire(n int64) []byte {
	p.mu.Lock()
	for p.inFlight > 0 && p.inFlight+n > p.limit {
		p.cond.Wait()
	}
	p.inFlight += n
	p.mu.Unlock()
	return make([]byte, n)
}

func (p *pool) release(n int64) {
	p.mu.Lock()
	p.inFlight -= n
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *pool) submit(j job) {
	p.pending.Add(1)
	p.jobs <- j
}

func (p *pool) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

// failed is the first error a worker met, if any.
func (p *pool) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return fmtErr(p.err)
	}
	return nil
}

// wait returns when every submitted file is written, with the first error.
func (p *pool) wait() error {
	p.pending.Wait()
	return p.failed()
}

// stop waits for the workers to finish and end.
func (p *pool) stop() {
	close(p.jobs)
	p.workers.Wait()
}
