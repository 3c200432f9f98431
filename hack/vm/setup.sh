# shellcheck shell=bash
# Sourced by hack/vm.sh: host packages and the guest kernel.
#
# vm_setup installs the Debian packages the harness needs (only those that are
# missing; `apt-get update` runs only when something must be fetched) and
# makes sure a Debian cloud kernel is unpacked in the cache. The kernel is
# whatever linux-image-cloud-amd64 depends on today: resolved when the cache
# is built, never hard-coded.

# Debian packages the harness needs on the host, and which they are for.
VM_HOST_PACKAGES=(
	qemu-system-x86         # the emulator
	busybox-static          # the guest's shell, /init and small tools; also cpio
	e2fsprogs               # mke2fs, resize2fs, e2fsck, dumpe2fs, tune2fs, debugfs
	thin-provisioning-tools # thin_check, thin_dump, thin_ls, thin_repair, thin_restore
	xfsprogs                # mkfs.xfs, xfs_growfs, xfs_repair
	dmsetup                 # for debugging inside the guest
	util-linux              # blkdiscard, blockdev, flock
	mount                   # losetup, mount, umount
	kmod                    # modinfo, to order the kernel modules
)

# The meta package whose dependency names the kernel to boot.
VM_KERNEL_META=${DMTHIN_VM_KERNEL_META:-linux-image-cloud-amd64}

vm_as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		vm_die "need root to run: $*"
	fi
}

# vm_pkg_installed PKG: true when dpkg has PKG fully installed.
vm_pkg_installed() {
	[[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

VM_APT_UPDATED=
vm_apt_update() {
	[[ -z $VM_APT_UPDATED ]] || return 0
	vm_log "apt-get update"
	vm_as_root apt-get update -q >&2 || vm_die "apt-get update failed"
	VM_APT_UPDATED=1
}

# vm_apt_install PKG...: installs the packages among PKG that are missing.
vm_apt_install() {
	local missing=() p
	for p in "$@"; do
		vm_pkg_installed "$p" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	command -v apt-get >/dev/null || vm_die "missing packages ${missing[*]} and no apt-get to install them"
	vm_apt_update
	vm_log "installing ${missing[*]}"
	vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "${missing[@]}" >&2 ||
		vm_die "apt-get install ${missing[*]} failed"
}

# vm_apt_download DIR PKG[=VERSION]: downloads the .deb into DIR, refreshing
# the package lists once if the first try fails.
vm_apt_download() {
	local dir=$1 pkg=$2 opts=(-q)
	# As root, apt's download sandbox user could not write here; stay root.
	[[ $EUID -ne 0 ]] || opts+=(-o APT::Sandbox::User=root)
	(cd "$dir" && apt-get "${opts[@]}" download "$pkg" >&2) && return 0
	[[ -z $VM_APT_UPDATED ]] || vm_die "apt-get download $pkg failed"
	vm_apt_update
	(cd "$dir" && apt-get "${opts[@]}" download "$pkg" >&2) || vm_die "apt-get download $pkg failed"
}

# vm_kernel_dir prints the unpacked kernel package in the cache, or fails.
vm_kernel_dir() {
	local name
	name=$(cat "$VM_CACHE/kernel/current" 2>/dev/null) || return 1
	[[ -n $name && -f $VM_CACHE/kernel/$name/.complete ]] || return 1
	echo "$VM_CACHE/kernel/$name"
}

# vm_ensure_kernel [refresh]: unpacks the kernel into the cache unless one is
# there already (with "refresh": unless it is the one Debian has now).
vm_ensure_kernel() {
	local refresh=${1:-}
	if [[ -z $refresh ]] && vm_kernel_dir >/dev/null; then
		return 0
	fi
	local tmp deps dep pkg ver name dir
	tmp=$(mktemp -d "$VM_CACHE/tmp.kernel.XXXXXX")
	vm_apt_download "$tmp" "$VM_KERNEL_META"
	deps=$(dpkg-deb -f "$tmp"/*.deb Depends) || vm_die "cannot read Depends of $VM_KERNEL_META"
	# Depends looks like "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)".
	pkg='' ver=''
	IFS=',|' read -ra deps_arr <<<"$deps"
	for dep in "${deps_arr[@]}"; do
		dep=${dep#"${dep%%[![:space:]]*}"}
		if [[ $dep =~ ^(linux-image-[^[:space:]]+)([[:space:]]*\(=[[:space:]]*([^\)[:space:]]+)\))? ]]; then
			pkg=${BASH_REMATCH[1]} ver=${BASH_REMATCH[3]}
			break
		fi
	done
	[[ -n $pkg ]] || vm_die "$VM_KERNEL_META depends on no linux-image package: $deps"
	name=$pkg${ver:+_$ver}
	dir=$VM_CACHE/kernel/$name
	if [[ ! -f $dir/.complete ]]; then
		vm_log "fetching kernel $pkg${ver:+ $ver} (named by $VM_KERNEL_META)"
		vm_apt_download "$tmp" "$pkg${ver:+=$ver}"
		rm -rf "$dir.tmp" "$dir"
		mkdir -p "$dir.tmp"
		dpkg -x "$tmp/$pkg"_*.deb "$dir.tmp" || vm_die "dpkg -x of $pkg failed"
		compgen -G "$dir.tmp/boot/vmlinuz-*" >/dev/null || vm_die "$pkg has no boot/vmlinuz-*"
		compgen -G "$dir.tmp/lib/modules/*/kernel" >/dev/null ||
			compgen -G "$dir.tmp/usr/lib/modules/*/kernel" >/dev/null ||
			vm_die "$pkg has no lib/modules/*/kernel"
		touch "$dir.tmp/.complete"
		mv "$dir.tmp" "$dir"
	fi
	rm -rf "$tmp"
	echo "$name" >"$VM_CACHE/kernel/current.tmp"
	mv "$VM_CACHE/kernel/current.tmp" "$VM_CACHE/kernel/current"
	# Older kernels are 100 MB each and nothing uses them any more.
	local old
	for old in "$VM_CACHE"/kernel/*/; do
		old=${old%/}
		[[ $old == "$dir" ]] || rm -rf "$old"
	done
	vm_log "kernel: $name"
}

# vm_prepare [refresh]: what every command needs first: the host packages,
# the kernel and the base initramfs (its path left in VM_BASE).
VM_BASE='' VM_BASE_CACHED=''
vm_prepare() {
	vm_apt_install "${VM_HOST_PACKAGES[@]}"
	vm_lock
	vm_ensure_kernel "${1:-}"
	VM_BASE=$(vm_ensure_base)
	VM_BASE_CACHED=$VM_BASE
	# A private link: another run may replace the cached base meanwhile.
	vm_workdir
	ln -f "$VM_BASE" "$VM_WORK/base.cpio" 2>/dev/null ||
		cp "$VM_BASE" "$VM_WORK/base.cpio" || vm_die "cannot copy $VM_BASE"
	ln -f "${VM_BASE%.cpio}.list" "$VM_WORK/base.list" 2>/dev/null ||
		cp "${VM_BASE%.cpio}.list" "$VM_WORK/base.list" || vm_die "cannot copy the base list"
	VM_BASE=$VM_WORK/base.cpio
	vm_unlock
}

# vm_setup [--refresh]: everything a run needs, installed or cached.
vm_setup() {
	local refresh=
	case "${1:-}" in
	--refresh) refresh=1 ;;
	"") ;;
	*) vm_die "setup: unknown argument $1 (only --refresh)" ;;
	esac
	vm_prepare "$refresh"
	vm_log "ready: kernel $(basename "$(vm_kernel_dir)"), base initramfs $VM_BASE_CACHED"
}
