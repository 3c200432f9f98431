// Package toolexec runs the filesystem tools (e2fsprogs, xfsprogs) that
// packages ext4 and xfs drive: it finds a program in $PATH or the sbin
// directories, runs it under a context with a fixed locale and no input,
// and turns a failure into an *ExecError carrying the command line, the exit
// status and what the program printed.
//
// A program it starts dies with the process that started it (a
// parent-death signal): a tool left running by a killed engine would keep
// the device it works on open, and the engine's next start would find it
// busy.
//
// It is not for: parsing what the programs print (each filesystem package
// does that for its own tools), or running anything long-lived.
package toolexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// MaxOutput caps how much of a program's stdout and stderr an ExecError keeps.
const MaxOutput = 8 << 10

// waitDelay bounds how long a cancelled program may keep its pipes open.
const waitDelay = 2 * time.Second

// ToolMissingError names a program that could not be found. Is reports
// true for Sentinel, the missing-tool error of the package that looked.
type ToolMissingError struct {
	Tool     string   // e.g. "mkfs.ext4"
	Package  string   // the Debian package that ships it, e.g. "e2fsprogs"
	Searched []string // directories tried besides $PATH
	Sentinel error    // what errors.Is matches, e.g. ext4.ErrToolMissing
}

func (e *ToolMissingError) Error() string {
	where := "PATH"
	if len(e.Searched) > 0 {
		where += ", " + strings.Join(e.Searched, ", ")
	}
	return fmt.Sprintf("%s not found in %s: install the %s package", e.Tool, where, e.Package)
}

// Is makes errors.Is(err, e.Sentinel) true.
func (e *ToolMissingError) Is(target error) bool { return e.Sentinel != nil && target == e.Sentinel }

// ExecError is a failed run of an external program: its command line, how it
// ended and what it printed. Err is the context's error when the run was
// cancelled (so errors.Is(err, context.Canceled) works), otherwise the error
// from os/exec (an *exec.ExitError for a non-zero exit).
type ExecError struct {
	Args     []string // command line; Args[0] is the resolved path of the program
	ExitCode int      // exit status, or -1 if it did not exit by itself (signal, cancellation, not started)
	Stderr   string   // standard error, trimmed and capped
	Stdout   string   // standard output, trimmed and capped (e2fsck reports problems there)
	Err      error
}

func (e *ExecError) Error() string {
	var b strings.Builder
	b.WriteString(strings.Join(e.Args, " "))
	b.WriteString(": ")
	if e.ExitCode >= 0 {
		fmt.Fprintf(&b, "exit status %d", e.ExitCode)
	} else {
		fmt.Fprintf(&b, "%v", e.Err)
	}
	if e.Stderr != "" {
		b.WriteString(": ")
		b.WriteString(e.Stderr)
	}
	if e.Stdout != "" {
		b.WriteString(": output: ")
		b.WriteString(e.Stdout)
	}
	return b.String()
}

// Unwrap returns the underlying error (the context's error for a cancelled run).
func (e *ExecError) Unwrap() error { return e.Err }

// Finder looks programs up: in $PATH, then in Dirs (which $PATH often lacks
// for non-root users and in minimal service environments). A program that
// is missing gives a *ToolMissingError naming Package and wrapping Sentinel.
type Finder struct {
	Dirs     []string
	Package  string
	Sentinel error
}

// Look returns the path of program name.
func (f Finder) Look(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range f.Dirs {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &ToolMissingError{Tool: name, Package: f.Package, Searched: append([]string(nil), f.Dirs...), Sentinel: f.Sentinel}
}

// Run looks tool up and runs it with args under ctx, with LC_ALL=C so that
// its messages are the same everywhere and standard input from /dev/null
// so that it never waits for an answer. okCodes lists exit statuses other
// than 0 that count as success (e2fsck uses 1 for "errors fixed"). On
// failure the error is an *ExecError (or a *ToolMissingError). Cancelling
// ctx kills the program.
func (f Finder) Run(ctx context.Context, tool string, okCodes []int, args ...string) error {
	_, err := f.Output(ctx, tool, okCodes, args...)
	return err
}

// Output is Run that also returns the program's standard output (in full,
// not capped) when it succeeds.
func (f Finder) Output(ctx context.Context, tool string, okCodes []int, args ...string) (string, error) {
	path, err := f.Look(tool)
	if err != nil {
		return "", err
	}
	argv := append([]string{path}, args...)
	if err := ctx.Err(); err != nil {
		return "", &ExecError{Args: argv, ExitCode: -1, Err: err}
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdin = nil // /dev/null
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = waitDelay
	runErr := runTied(cmd)
	if runErr == nil {
		return stdout.String(), nil
	}
	exitCode := -1
	if cmd.ProcessState != nil {
		exitCode = cmd.ProcessState.ExitCode()
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		runErr = fmt.Errorf("%w (%w)", ctxErr, runErr)
	} else {
		var exitErr *exec.ExitError
		if errors.As(runErr, &exitErr) && slices.Contains(okCodes, exitCode) {
			return stdout.String(), nil
		}
	}
	return "", &ExecError{
		Args:     argv,
		ExitCode: exitCode,
		Stderr:   CapOutput(stderr.Bytes()),
		Stdout:   CapOutput(stdout.Bytes()),
		Err:      runErr,
	}
}

// runTied runs cmd so that the kernel kills it (SIGKILL) when this process
// dies. The kernel sends the parent-death signal when the thread that
// forked the child exits, not the process, and Go may end or reuse its
// threads: the goroutine keeps its thread locked from the fork until the
// child has been waited for.
func runTied(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return cmd.Run()
}

// CapOutput trims surrounding white space and keeps at most MaxOutput
// bytes, saying how much was left out.
func CapOutput(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) <= MaxOutput {
		return s
	}
	return fmt.Sprintf("%s... (%d more bytes)", s[:MaxOutput], len(s)-MaxOutput)
}
