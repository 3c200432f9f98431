# shellcheck shell=bash
# Sourced by hack/vm.sh: the guest's initramfs.
#
# The initramfs is two newc cpio archives back to back (the kernel unpacks
# them in turn):
#   base    busybox, dash, /init, the kernel modules in load order, the real
#           filesystem and thin-provisioning tools with the libraries ldd
#           lists for them. Built once and cached in $VM_CACHE/initrd, keyed
#           by everything that goes into it.
#   payload what one run brings: test binaries, --file files, /dmthin/run.sh.
#           Packed anew for every run.

# Tools copied into the guest (with the libraries they load), ahead of
# busybox's applets in PATH. A missing required tool is an error.
VM_TOOLS_REQUIRED=(
	dash
	mke2fs mkfs.ext4 resize2fs e2fsck fsck.ext4 dumpe2fs tune2fs debugfs
	pdata_tools thin_check thin_dump thin_ls thin_repair thin_restore
	thin_delta thin_metadata_size
	mkfs.xfs xfs_growfs xfs_repair xfs_db xfs_info xfs_io xfs_admin
	dmsetup losetup blkdiscard blockdev mount umount
)
VM_TOOLS_OPTIONAL=(findmnt lsblk wipefs fallocate e2image xfs_spaceman thin_trim)

# Kernel modules to load: "-" required, "?" optional, "&" required but loaded
# in the background (see hack/vm/init); then module parameters. Their
# dependencies are found from each module's depends= field and loaded first.
# Modules built into the kernel are skipped.
VM_MODULES=(
	"? crc32c-intel"
	"- dm-mod"
	"- dm-thin-pool"
	"- dm-flakey"
	"- dm-delay"
	"- dm-zero"
	"- loop max_loop=8"
	"- ext4"
	"- overlay"
	"& xfs"
	"? virtio_pci"
	"? virtio_blk"
)

# vm_is_dynamic_elf FILE
vm_is_dynamic_elf() {
	local magic out
	magic=$(head -c 4 "$1" 2>/dev/null | tr -d '\0')
	[[ $magic == $'\x7fELF' ]] || return 1
	out=$(LC_ALL=C ldd "$1" 2>&1) || return 1
	[[ $out != *"statically linked"* && $out != *"not a dynamic executable"* ]]
}

# vm_stage_add STAGE PATH [SKIPLIST]: copies the host file PATH into the tree
# STAGE at the same place (directory symlinks resolved), with the shared
# libraries ldd lists for it. A symlink to a file in the same directory stays
# a symlink (thin_check -> pdata_tools). Paths listed in the file SKIPLIST
# (already in the base archive) are left out.
vm_stage_add() {
	local stage=$1 path=$2 skip=${3:-} dir base dest target lib
	dir=$(readlink -f "$(dirname "$path")") || vm_die "no such directory: $(dirname "$path")"
	base=$(basename "$path")
	dest=$stage$dir/$base
	[[ -e $dest || -L $dest ]] && return 0
	if [[ -n $skip ]] && grep -qxF ".$dir/$base" "$skip"; then
		return 0
	fi
	[[ -e $path ]] || vm_die "no such file: $path"
	mkdir -p "$stage$dir"
	if [[ -L $path ]]; then
		target=$(readlink "$path")
		if [[ $target != */* ]]; then
			ln -s "$target" "$dest"
			vm_stage_add "$stage" "$dir/$target" "$skip"
			return 0
		fi
	fi
	cp -L --preserve=mode "$path" "$dest"
	if vm_is_dynamic_elf "$path"; then
		if LC_ALL=C ldd "$path" | grep -q 'not found'; then
			vm_die "$path: ldd cannot find a library: $(ldd "$path" | grep 'not found')"
		fi
		for lib in $(LC_ALL=C ldd "$path" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
			vm_stage_add "$stage" "$lib" "$skip"
		done
	fi
}

# vm_stage_skeleton STAGE: the top-level layout, mirroring the host's
# merged-/usr symlinks (/lib64 -> usr/lib64 ...) so that ELF interpreter and
# library paths resolve the same way in the guest.
vm_stage_skeleton() {
	local stage=$1 d
	mkdir -p "$stage"/{dev,proc,sys,tmp,run,root,etc,bb,mnt} "$stage"/usr/{bin,sbin,lib}
	for d in bin sbin lib lib32 lib64 libx32; do
		if [[ -L /$d ]]; then
			mkdir -p "$stage/$(readlink -f "/$d")"
			ln -s "$(readlink "/$d")" "$stage/$d"
		elif [[ -d /$d ]]; then
			mkdir -p "$stage/$d"
		fi
	done
}

# vm_tool_path TOOL: the tool's path on the host (sbin included).
vm_tool_path() {
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v "$1"
}

# vm_modules_root KERNELDIR: prints lib/modules/VERSION inside the package.
vm_modules_root() {
	local d
	for d in "$1"/lib/modules/* "$1"/usr/lib/modules/*; do
		[[ -d $d/kernel ]] && { echo "$d"; return 0; }
	done
	return 1
}

# vm_stage_modules STAGE KERNELDIR: copies the modules and writes
# /etc/dmthin/modules in dependency order, computed from modinfo's depends=.
vm_stage_modules() {
	local stage=$1 kdir=$2 mroot f n entry need name params
	mroot=$(vm_modules_root "$kdir") || vm_die "no modules in $kdir"
	local -A ko=() builtin=() done_=()
	while IFS= read -r f; do
		n=${f##*/}
		n=${n%%.ko*}
		ko[${n//-/_}]=$f
	done < <(find "$mroot/kernel" -name '*.ko*')
	if [[ -f $mroot/modules.builtin ]]; then
		while IFS= read -r f; do
			n=${f##*/}
			n=${n%%.ko*}
			builtin[${n//-/_}]=1
		done <"$mroot/modules.builtin"
	fi
	mkdir -p "$stage/usr/lib/modules/dmthin" "$stage/etc/dmthin"
	: >"$stage/etc/dmthin/modules"

	# add NAME NEED PARAMS: loads NAME's dependencies, then NAME.
	add() {
		local name=${1//-/_} need=$2 params=$3 file deps dep out
		[[ -z ${done_[$name]:-} ]] || return 0
		done_[$name]=1
		if [[ -n ${builtin[$name]:-} ]]; then
			return 0
		fi
		file=${ko[$name]:-}
		if [[ -z $file ]]; then
			[[ $need == "?" ]] || vm_die "kernel module $name is neither built in nor in $mroot"
			vm_log "optional kernel module $name not found; skipped"
			return 0
		fi
		deps=$(modinfo -F depends "$file") || vm_die "modinfo $file failed"
		IFS=, read -ra deps <<<"$deps"
		for dep in "${deps[@]}"; do
			[[ -n $dep ]] && add "$dep" "$need" ""
		done
		out=$stage/usr/lib/modules/dmthin/$name.ko
		case "$file" in
		*.ko) cp "$file" "$out" ;;
		*.ko.xz) xz -dc "$file" >"$out" ;;
		*.ko.zst) zstd -qdc "$file" >"$out" ;;
		*.ko.gz) gzip -dc "$file" >"$out" ;;
		*) vm_die "unknown module format: $file" ;;
		esac || vm_die "cannot unpack $file"
		echo "$need $name.ko${params:+ $params}" >>"$stage/etc/dmthin/modules"
	}
	for entry in "${VM_MODULES[@]}"; do
		read -r need name params <<<"$entry"
		add "$name" "$need" "${params:-}"
	done
	unset -f add
}

# vm_base_key KERNELDIR: a digest of everything that goes into the base
# archive: the scripts that build it, the kernel, the tools on the host (their
# size and mtime) and the library cache, which changes with any library.
vm_base_key() {
	local t p
	{
		cat "$VM_HACK/vm/init" "$VM_HACK/vm/run-tests" "$VM_HACK/vm/modprobe" "$VM_HACK/vm/initrd.sh"
		echo "$1"
		for t in busybox "${VM_TOOLS_REQUIRED[@]}" "${VM_TOOLS_OPTIONAL[@]}"; do
			p=$(vm_tool_path "$t") && stat -L -c '%n %s %Y' "$p"
		done
		stat -L -c '%n %s %Y' /etc/ld.so.cache 2>/dev/null
	} | sha256sum | cut -c1-16
}

# vm_ensure_base: prints the cached base archive, building it if needed.
# Call with the cache lock held.
vm_ensure_base() {
	local kdir key out stage t p a
	kdir=$(vm_kernel_dir) || vm_die "no kernel in $VM_CACHE; run hack/vm.sh setup"
	key=$(vm_base_key "$kdir")
	out=$VM_CACHE/initrd/base-$key.cpio
	if [[ -f $out && -f ${out%.cpio}.list && -z ${DMTHIN_VM_REBUILD:-} ]]; then
		echo "$out"
		return 0
	fi
	vm_log "building the base initramfs ($key)"
	mkdir -p "$VM_CACHE/initrd"
	stage=$(mktemp -d "$VM_CACHE/tmp.base.XXXXXX")
	vm_stage_skeleton "$stage"

	p=$(vm_tool_path busybox) || vm_die "busybox not installed (hack/vm.sh setup)"
	vm_is_dynamic_elf "$p" && vm_log "warning: $p is not static; copying its libraries"
	vm_stage_add "$stage" "$p"
	# busybox applets come last in PATH (/bb), after the real tools.
	for a in $("$p" --list); do
		ln -s /usr/bin/busybox "$stage/bb/$a"
	done
	for t in "${VM_TOOLS_REQUIRED[@]}"; do
		p=$(vm_tool_path "$t") || vm_die "tool $t not installed (hack/vm.sh setup)"
		vm_stage_add "$stage" "$p"
	done
	for t in "${VM_TOOLS_OPTIONAL[@]}"; do
		p=$(vm_tool_path "$t") && vm_stage_add "$stage" "$p"
	done
	vm_stage_modules "$stage" "$kdir"
	# /bin/sh is dash: busybox's sh runs its own applets (losetup, mount...)
	# ahead of PATH, and scripts and tests must get the real tools.
	ln -sf dash "$stage/usr/bin/sh"

	install -m 0755 "$VM_HACK/vm/init" "$stage/init"
	mkdir -p "$stage/usr/libexec/dmthin"
	install -m 0755 "$VM_HACK/vm/run-tests" "$stage/usr/libexec/dmthin/run-tests"
	install -m 0755 "$VM_HACK/vm/modprobe" "$stage/usr/libexec/dmthin/modprobe"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
	printf 'root:x:0:\ntty:x:5:\ndisk:x:6:\nnogroup:x:65534:\n' >"$stage/etc/group"
	: >"$stage/etc/fstab"
	# The interactive shell is busybox's (line editing); aliases make it run
	# the real tools rather than its applets of the same names.
	{
		# shellcheck disable=SC2016 # expanded by the guest's shell
		echo 'export PS1='\''dmthin-vm:$PWD# '\'''
		for p in "$stage"/usr/sbin/* "$stage"/usr/bin/*; do
			a=${p##*/}
			[[ -e $stage/bb/$a || -L $stage/bb/$a ]] || continue
			[[ $a != sh && $a != busybox ]] || continue
			echo "alias $a=${p#"$stage"}"
		done
	} >"$stage/etc/profile"

	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort) >"$stage.list"
	# Not compressed: under emulation the kernel unpacks a plain archive
	# faster than it inflates a gzip'd one (22 MB vs 9 MB, measured).
	vm_cpio "$stage" >"$stage.cpio" || vm_die "packing the base initramfs failed"
	rm -rf "$stage"
	mv "$stage.list" "${out%.cpio}.list"
	mv "$stage.cpio" "$out"
	# Older bases are of no use any more.
	for p in "$VM_CACHE"/initrd/base-*; do
		[[ $p == "$out" || $p == "${out%.cpio}.list" ]] || rm -f "$p"
	done
	vm_log "base initramfs: $(du -h "$out" | cut -f1) (kernel $(basename "$kdir"))"
	echo "$out"
}

# vm_cpio DIR: writes a newc archive of DIR's contents, owned by root.
vm_cpio() {
	local bb
	bb=$(vm_tool_path busybox) || vm_die "busybox not installed (hack/vm.sh setup)"
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 2>/dev/null)
}
