package ext4

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The e2fsprogs programs this package runs.
const (
	toolMkfs    = "mkfs.ext4"
	toolTune2fs = "tune2fs"
	toolResize  = "resize2fs"
	toolFsck    = "e2fsck"
)

// sbinDirs are tried after $PATH, which often lacks them for non-root users
// and in minimal service environments. Tests empty it to simulate a machine
// without e2fsprogs.
var sbinDirs = []string{"/usr/sbin", "/sbin"}

// maxOutput caps how much of a program's stdout and stderr an ExecError keeps.
const maxOutput = 8 << 10

// waitDelay bounds how long a cancelled program may keep its pipes open.
const waitDelay = 2 * time.Second

// lookTool finds an e2fsprogs program in $PATH or sbinDirs.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range sbinDirs {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &ToolMissingError{Tool: name, Searched: append([]string(nil), sbinDirs...)}
}

// run executes tool with args under ctx, with LC_ALL=C so that its messages
// are the same everywhere. okCodes lists exit statuses other than 0 that count
// as success (e2fsck uses 1 for "errors fixed"). On failure the error is an
// *ExecError (or a *ToolMissingError).
func run(ctx context.Context, tool string, okCodes []int, args ...string) error {
	path, err := lookTool(tool)
	if err != nil {
		return err
	}
	argv := append([]string{path}, args...)
	if err := ctx.Err(); err != nil {
		return &ExecError{Args: argv, ExitCode: -1, Err: err}
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdin = nil // /dev/null: never wait for an answer to a question
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = waitDelay
	runErr := cmd.Run()
	if runErr == nil {
		return nil
	}
	exitCode := -1
	if cmd.ProcessState != nil {
		exitCode = cmd.ProcessState.ExitCode()
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		runErr = fmt.Errorf("%w (%v)", ctxErr, runErr)
	} else {
		var exitErr *exec.ExitError
		if errors.As(runErr, &exitErr) && slices.Contains(okCodes, exitCode) {
			return nil
		}
	}
	return &ExecError{
		Args:     argv,
		ExitCode: exitCode,
		Stderr:   capOutput(stderr.Bytes()),
		Stdout:   capOutput(stdout.Bytes()),
		Err:      runErr,
	}
}

// capOutput trims surrounding white space and keeps at most maxOutput bytes,
// saying how much was left out.
func capOutput(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) <= maxOutput {
		return s
	}
	return fmt.Sprintf("%s... (%d more bytes)", s[:maxOutput], len(s)-maxOutput)
}
