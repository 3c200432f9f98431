package main

import (
	"fmt"
	"io"
	"time"
)

// progress shows a long operation's advance on stderr, rewriting one line,
// when stderr is a terminal; otherwise (a pipe, a log file, a test) it
// prints nothing.
type progress struct {
	w     io.Writer // nil when quiet
	last  time.Time
	shown bool
}

func (c *cmdCtx) progress() *progress {
	if c.tty(c.stderr) {
		return &progress{w: c.stderr}
	}
	return &progress{}
}

// update shows done of total bytes of what, at most ten times a second.
func (p *progress) update(what string, done, total int64) {
	if p.w == nil || (done < total && time.Since(p.last) < 100*time.Millisecond) {
		return
	}
	p.last = time.Now()
	pct := 100
	if total > 0 {
		pct = int(done * 100 / total)
	}
	fmt.Fprintf(p.w, "\r\033[K%s: %s of %s (%d%%)", what, size(done), size(total), pct)
	p.shown = true
}

// step shows a step without a measure.
func (p *progress) step(what string) {
	if p.w == nil {
		return
	}
	fmt.Fprintf(p.w, "\r\033[K%s...", what)
	p.shown = true
}

// done ends the progress line.
func (p *progress) done() {
	if p.w != nil && p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
	p.shown = false
}
